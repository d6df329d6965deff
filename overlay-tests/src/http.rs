//! A small static HTTP/1.0 server for lab hosts that run no fpn software
//! (the NAS behind a gateway): `GET /NAME` answers the file NAME of its
//! directory, `GET /whoami` the address and port the request came from,
//! so a test sees whom the host believes it talks to.
//!
//! One thread per connection, one request per connection, bounded request
//! line and headers; nothing is written. Not a production server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;

/// Longest request head read.
const MAX_HEAD: u64 = 8192;

/// Serves `dir` on `listen` until the process is killed; one line per
/// request on stderr (`GET /path from ADDR -> STATUS`).
pub fn serve(listen: SocketAddr, dir: &Path) -> Result<(), Error> {
    let l = TcpListener::bind(listen).map_err(|e| Error::io(format!("binding {listen}"), e))?;
    eprintln!("serving {} on http://{listen}/", dir.display());
    for conn in l.incoming() {
        let Ok(s) = conn else { continue };
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            if let Err(e) = answer(s, &dir) {
                eprintln!("request failed: {e}");
            }
        });
    }
    Ok(())
}

fn answer(mut s: TcpStream, dir: &Path) -> std::io::Result<()> {
    let peer = s.peer_addr()?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = BufReader::new((&s).take(MAX_HEAD));
    let mut line = String::new();
    head.read_line(&mut line)?;
    // The rest of the head is read and ignored (up to the blank line).
    let mut h = String::new();
    while head.read_line(&mut h)? > 2 {
        h.clear();
    }
    let mut parts = line.split_whitespace();
    let (status, body): (&str, Vec<u8>) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/whoami")) => ("200 OK", format!("{peer}\n").into_bytes()),
        (Some("GET"), Some(path)) => match file_of(dir, path) {
            Some(p) => match std::fs::read(&p) {
                Ok(b) => ("200 OK", b),
                Err(_) => ("404 Not Found", b"not found\n".to_vec()),
            },
            None => ("400 Bad Request", b"bad path\n".to_vec()),
        },
        _ => ("400 Bad Request", b"GET only\n".to_vec()),
    };
    eprintln!("{} from {peer} -> {status}", line.trim_end());
    write!(
        s,
        "HTTP/1.0 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(&body)?;
    s.flush()
}

/// The file a request path names inside `dir`: plain names only (no `..`,
/// no hidden files); `/` is `index.html`.
fn file_of(dir: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.strip_prefix('/')?;
    let rel = if rel.is_empty() { "index.html" } else { rel };
    rel.split('/')
        .all(|c| !c.is_empty() && !c.starts_with('.'))
        .then(|| dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_directory() {
        let d = Path::new("/srv");
        assert_eq!(file_of(d, "/"), Some(PathBuf::from("/srv/index.html")));
        assert_eq!(file_of(d, "/a/b.txt"), Some(PathBuf::from("/srv/a/b.txt")));
        assert_eq!(file_of(d, "/../etc/passwd"), None);
        assert_eq!(file_of(d, "/.hidden"), None);
        assert_eq!(file_of(d, "//x"), None);
        assert_eq!(file_of(d, "x"), None);
    }
}
