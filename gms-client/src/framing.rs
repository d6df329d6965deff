//! Reading and writing control-protocol frames on async byte streams.
//!
//! Generic over tokio's `AsyncRead`/`AsyncWrite`, so the QUIC streams and the
//! tests' in-memory pipes use the same code.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::{HEADER_LEN, MAX_BODY, parse_header};
use crate::{Error, Result};

/// Reads one frame: `Ok(None)` when the stream ended cleanly before a frame.
///
/// The length is checked against [`MAX_BODY`] before the body is read, so
/// an oversized announcement costs nothing; see [`read_frame_limited`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<(u8, Vec<u8>)>> {
    read_frame_limited(r, MAX_BODY).await
}

/// Bytes the body buffer starts with; it grows as bytes arrive.
const FIRST_CHUNK: usize = 4096;

/// Reads one frame whose body may be at most `max` bytes (a stream that can
/// only carry small messages, such as an unauthenticated enrollment, passes
/// its own bound). The body buffer grows with the bytes that actually
/// arrive: a peer that announces a large frame and sends little costs what
/// it sent, not what it announced.
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; HEADER_LEN];
    let n = r.read(&mut h[..1]).await.map_err(stream_err)?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut h[1..]).await.map_err(stream_err)?;
    let (ty, len) = parse_header(&h)?;
    if len > max {
        return Err(Error::Protocol(format!(
            "frame of {len} bytes exceeds the limit of {max} for this stream"
        )));
    }
    let mut body = Vec::with_capacity(len.min(FIRST_CHUNK));
    let got = (&mut *r)
        .take(len as u64)
        .read_to_end(&mut body)
        .await
        .map_err(stream_err)?;
    if got < len {
        return Err(Error::Protocol("stream ended inside a frame".into()));
    }
    Ok(Some((ty, body)))
}

/// Writes one encoded frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<()> {
    w.write_all(frame).await.map_err(stream_err)
}

fn stream_err(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Protocol("stream ended inside a frame".into())
    } else {
        Error::Stream(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ClientMsg;

    #[tokio::test]
    async fn frames_pass_and_bad_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let f = ClientMsg::DirectoryQuery("nas".into()).encode().unwrap();
        write_frame(&mut a, &f).await.unwrap();
        let (ty, body) = read_frame(&mut b).await.unwrap().unwrap();
        assert!(
            matches!(ClientMsg::decode(ty, &body), Ok(ClientMsg::DirectoryQuery(n)) if n == "nas")
        );

        // Oversized announcement: refused from the header alone.
        let len = (MAX_BODY as u32 + 1).to_be_bytes();
        write_frame(&mut a, &[1, 4, len[0], len[1], len[2], len[3]])
            .await
            .unwrap();
        assert!(matches!(read_frame(&mut b).await, Err(Error::Protocol(_))));

        // A stream that ends inside a frame.
        let (mut a, mut b) = tokio::io::duplex(64);
        write_frame(&mut a, &[1, 4, 0, 0, 0, 9, 1]).await.unwrap();
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(Error::Protocol(_))));

        // A stream's own, lower limit: refused from the header alone.
        let (mut a, mut b) = tokio::io::duplex(64);
        write_frame(&mut a, &[1, 1, 0, 0, 1, 0]).await.unwrap();
        assert!(matches!(
            read_frame_limited(&mut b, 255).await,
            Err(Error::Protocol(m)) if m.contains("limit of 255")
        ));

        // A clean end between frames.
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(read_frame(&mut b).await.unwrap().is_none());
    }
}
