//! [`Capture`]: tcpdump running on one interface of the lab, writing a pcap
//! file that a test reads when the traffic is done.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Pcap, Process};

/// A running packet capture. [`stop`](Capture::stop) it to read what it saw;
/// dropping it stops tcpdump too (the file stays in the lab's log directory
/// until the lab is removed).
#[derive(Debug)]
pub struct Capture {
    process: Process,
    path: PathBuf,
}

impl Capture {
    pub(crate) fn new(process: Process, path: PathBuf) -> Self {
        Capture { process, path }
    }

    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The packets written so far (tcpdump runs with `-U`, so each packet is
    /// in the file right after it was seen).
    pub fn snapshot(&self) -> Result<Pcap, Error> {
        Pcap::read(&self.path, true)
    }

    /// Waits until `done` holds for the packets captured so far, and returns them.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Pcap) -> bool,
    ) -> Result<Pcap, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let pcap = self.snapshot()?;
            if done(&pcap) {
                return Ok(pcap);
            }
            if let Some(status) = self.process.exit_status() {
                return Err(self.process.exited(status, "captured packets".into()));
            }
            if Instant::now() >= deadline {
                return Err(Error::WaitTimeout {
                    what: format!("packets in {} (have {})", self.path.display(), pcap.len()),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops tcpdump (SIGINT, so it flushes and closes the file) and reads
    /// every packet it captured.
    pub fn stop(self) -> Result<Pcap, Error> {
        // Packets sent just before may still be on their way into the file:
        // wait until it has not grown for a moment (at most 2 s).
        let size = || std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = size();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = size();
            if now == last {
                break;
            }
            last = now;
        }
        self.process.signal(libc::SIGINT);
        let clean = self.process.wait_timeout(Duration::from_secs(5)).is_ok();
        if !clean {
            self.process.kill();
        }
        // After a kill the last record may be cut short; accept that.
        Pcap::read(&self.path, !clean)
    }
}
