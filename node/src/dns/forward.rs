//! Forwarding names outside the zone to the upstream resolvers.
//!
//! Each forwarded request is one task holding a permit of a bounded
//! semaphore: that set of tasks is the in-flight table. A task tries the
//! upstreams in order, for a configured number of rounds, each exchange
//! bounded by the per-attempt timeout, so a client always hears back within
//! `rounds x upstreams x timeout` (SERVFAIL when nobody answered).
//!
//! Every exchange uses a fresh socket (a kernel-chosen source port) and a
//! random transaction id, and only a response with that id and the same
//! question is accepted: a blind spoofer has to guess 32 bits, not 16. The
//! client's id is put back into the answer.
//!
//! UDP towards upstreams announces at most the configured EDNS payload (1232
//! by default), whatever the client announced: fragments get lost on real
//! paths, while the client sits on this host or the overlay. A truncated
//! UDP answer is fetched again over TCP from the same upstream, and the
//! client gets it in full if it fits what the client announced; otherwise a
//! truncated answer tells the client to retry over TCP. Requests that came
//! over TCP are forwarded over TCP.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, Message, MessageType, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tracing::debug;

use super::query::{self, ForwardJob, HEADER_LEN, MAX_TCP_RESPONSE, Transport};
use super::stats::DnsStats;

/// Settings of the forwarder (from [`DnsConfig`](super::DnsConfig)).
#[derive(Clone, Debug)]
pub(crate) struct ForwardConfig {
    pub(crate) upstreams: Vec<SocketAddr>,
    pub(crate) timeout: Duration,
    pub(crate) rounds: u8,
    pub(crate) udp_payload: u16,
    pub(crate) max_in_flight: usize,
}

/// The forwarder, shared by the stub's tasks.
#[derive(Debug)]
pub(crate) struct Forwarder {
    cfg: ForwardConfig,
    in_flight: Arc<Semaphore>,
    rng: SystemRandom,
    stats: DnsStats,
}

/// Why one exchange with one upstream gave nothing usable.
#[derive(Debug)]
enum Failure {
    Io(std::io::Error),
    Timeout,
    /// The response was not one to our question.
    Mismatch,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Timeout => f.write_str("timed out"),
            Self::Mismatch => f.write_str("answer does not match the question"),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl Forwarder {
    pub(crate) fn new(cfg: ForwardConfig, stats: DnsStats) -> Self {
        let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight));
        Self {
            cfg,
            in_flight,
            rng: SystemRandom::new(),
            stats,
        }
    }

    /// The upstream resolvers in use.
    pub(crate) fn upstreams(&self) -> &[SocketAddr] {
        &self.cfg.upstreams
    }

    /// A slot in the in-flight table, or `None` when it is full.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.in_flight).try_acquire_owned().ok()
    }

    /// The SERVFAIL for a job that cannot be forwarded (table full), counted.
    pub(crate) fn refuse(&self, job: &ForwardJob) -> Vec<u8> {
        self.stats.failed();
        debug!("forwarding table full");
        query::encode(
            &query::error_response(&job.request, ResponseCode::ServFail),
            512,
        )
    }

    /// Resolves `job` through the upstreams; returns the bytes for the client:
    /// the upstream's answer with the client's id, or SERVFAIL.
    pub(crate) async fn resolve(&self, job: &ForwardJob) -> Vec<u8> {
        let question = &job.request.queries[0];
        let udp_query = self.udp_query(job);
        let mut fallback = None;
        for _round in 0..self.cfg.rounds {
            for &up in &self.cfg.upstreams {
                let got = match job.transport {
                    Transport::Udp => self.via_udp(up, &udp_query, &job.raw, question).await,
                    Transport::Tcp => self.exchange_tcp(up, &job.raw, question).await,
                };
                match got {
                    Ok(resp) => {
                        let rcode = resp[3] & 0x0f;
                        // SERVFAIL, NOTIMP, REFUSED: another upstream may do
                        // better (as the C library does); keep it in case
                        // none does.
                        if matches!(rcode, 2 | 4 | 5) {
                            debug!(%up, rcode, "upstream refused; trying the next");
                            fallback = Some(resp);
                            continue;
                        }
                        self.stats.forwarded();
                        return finish(resp, job);
                    }
                    Err(e) => debug!(%up, error = %e, "upstream did not answer"),
                }
            }
        }
        if let Some(resp) = fallback {
            self.stats.forwarded();
            return finish(resp, job);
        }
        self.stats.failed();
        debug!(upstreams = self.cfg.upstreams.len(), "no upstream answered");
        query::encode(
            &query::error_response(&job.request, ResponseCode::ServFail),
            job.client_limit,
        )
    }

    /// The request as sent upstream over UDP: unchanged, unless the client
    /// announced a larger EDNS payload than the upstream path should carry.
    fn udp_query(&self, job: &ForwardJob) -> Vec<u8> {
        match &job.request.edns {
            Some(e) if e.max_payload() > self.cfg.udp_payload => {
                let mut m = job.request.clone();
                if let Some(e) = m.edns.as_mut() {
                    e.set_max_payload(self.cfg.udp_payload);
                }
                m.to_vec().unwrap_or_else(|_| job.raw.clone())
            }
            _ => job.raw.clone(),
        }
    }

    /// UDP, then TCP to the same upstream when the answer was truncated.
    async fn via_udp(
        &self,
        up: SocketAddr,
        udp_query: &[u8],
        raw: &[u8],
        question: &Query,
    ) -> Result<Vec<u8>, Failure> {
        let resp = self.exchange_udp(up, udp_query, question).await?;
        if resp[2] & 0x02 == 0 {
            return Ok(resp);
        }
        debug!(%up, "truncated answer; retrying over TCP");
        match self.exchange_tcp(up, raw, question).await {
            Ok(full) => Ok(full),
            // The truncated answer still says something (and makes the
            // client retry over TCP itself).
            Err(e) => {
                debug!(%up, error = %e, "TCP retry failed");
                Ok(resp)
            }
        }
    }

    async fn exchange_udp(
        &self,
        up: SocketAddr,
        msg: &[u8],
        question: &Query,
    ) -> Result<Vec<u8>, Failure> {
        let id = self.fresh_id();
        let out = with_id(msg, id);
        let attempt = async {
            let sock = UdpSocket::bind(unspecified_for(up)).await?;
            sock.connect(up).await?;
            sock.send(&out).await?;
            let mut buf = vec![0u8; usize::from(u16::MAX)];
            loop {
                // A connected socket only hears from `up`; anything not
                // matching our id and question is ignored until the timeout.
                let n = sock.recv(&mut buf).await?;
                if accept(&buf[..n], id, question) {
                    buf.truncate(n);
                    return Ok(buf);
                }
                debug!(%up, len = n, "ignored a response that does not match");
            }
        };
        timeout(self.cfg.timeout, attempt)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    async fn exchange_tcp(
        &self,
        up: SocketAddr,
        msg: &[u8],
        question: &Query,
    ) -> Result<Vec<u8>, Failure> {
        self.stats.upstream_tcp();
        let id = self.fresh_id();
        let out = with_id(msg, id);
        let len = u16::try_from(out.len()).map_err(|_| Failure::Mismatch)?;
        let attempt = async {
            let mut s = TcpStream::connect(up).await?;
            let mut framed = Vec::with_capacity(out.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&out);
            s.write_all(&framed).await?;
            let n = usize::from(s.read_u16().await?);
            let mut buf = vec![0u8; n];
            s.read_exact(&mut buf).await?;
            if accept(&buf, id, question) {
                Ok(buf)
            } else {
                Err(Failure::Mismatch)
            }
        };
        timeout(self.cfg.timeout, attempt)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    fn fresh_id(&self) -> u16 {
        let mut b = [0u8; 2];
        // SystemRandom only fails when the OS has no randomness source; a
        // fixed id then still works, it only makes spoofing easier.
        if self.rng.fill(&mut b).is_err() {
            debug!("no randomness for a DNS id");
        }
        u16::from_be_bytes(b)
    }
}

/// `msg` with its transaction id replaced.
fn with_id(msg: &[u8], id: u16) -> Vec<u8> {
    let mut out = msg.to_vec();
    if out.len() >= 2 {
        out[..2].copy_from_slice(&id.to_be_bytes());
    }
    out
}

/// Whether `resp` is a response to our query: same id, QR set, and the same
/// question (or none, as some servers send with an error code).
fn accept(resp: &[u8], id: u16, question: &Query) -> bool {
    let mut d = BinDecoder::new(resp);
    let Ok(header) = Header::read(&mut d) else {
        return false;
    };
    if header.metadata.id != id || header.metadata.message_type != MessageType::Response {
        return false;
    }
    match header.counts.queries {
        0 => header.metadata.response_code != ResponseCode::NoError,
        1 => Message::read_queries(&mut d, 1).is_ok_and(|q| q.first() == Some(question)),
        _ => false,
    }
}

/// The client's answer from an upstream's: the client's id back in place,
/// truncated (TC set, question and OPT only) when it exceeds what the client
/// takes.
fn finish(mut resp: Vec<u8>, job: &ForwardJob) -> Vec<u8> {
    let client_id = job.request.metadata.id;
    if resp.len() <= job.client_limit.min(MAX_TCP_RESPONSE) {
        resp[..2].copy_from_slice(&client_id.to_be_bytes());
        return resp;
    }
    let mut t = query::error_response(&job.request, ResponseCode::NoError);
    // Keep the upstream's flags and code; only the records go.
    if let Ok(h) = Header::read(&mut BinDecoder::new(&resp[..HEADER_LEN])) {
        t.metadata = h.metadata;
        t.metadata.id = client_id;
    }
    t.metadata.truncation = true;
    query::encode(&t, job.client_limit)
}

fn unspecified_for(up: SocketAddr) -> SocketAddr {
    match up {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn q() -> Query {
        Query::query(
            Name::from_ascii("www.example.test.").unwrap(),
            RecordType::A,
        )
    }

    fn response(id: u16, query: Option<Query>) -> Vec<u8> {
        let mut m = Message::response(id, hickory_proto::op::OpCode::Query);
        if let Some(q) = query {
            m.add_query(q);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn only_matching_responses_are_accepted() {
        assert!(accept(&response(7, Some(q())), 7, &q()));
        assert!(!accept(&response(8, Some(q())), 7, &q()));
        let other = Query::query(
            Name::from_ascii("evil.example.test.").unwrap(),
            RecordType::A,
        );
        assert!(!accept(&response(7, Some(other)), 7, &q()));
        // Upper case from the upstream still matches (names compare
        // case-insensitively).
        let upper = Query::query(
            Name::from_ascii("WWW.example.TEST.").unwrap(),
            RecordType::A,
        );
        assert!(accept(&response(7, Some(upper)), 7, &q()));
        assert!(!accept(&response(7, None), 7, &q()));
        let mut query_not_response = response(7, Some(q()));
        query_not_response[2] &= 0x7f;
        assert!(!accept(&query_not_response, 7, &q()));
        assert!(!accept(&[0, 7, 0x80], 7, &q()));
    }
}
