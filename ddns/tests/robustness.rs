//! Malformed input against the running binary: truncated and malformed
//! packets, oversized names, compression loops, over UDP and TCP. The
//! server must keep answering.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use common::Setup;

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        m.extend_from_slice(&c.to_be_bytes());
    }
    m
}

/// Requests that must not crash or stall the server.
fn nasty() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let good = {
        let mut m = header(1, 0x0100, [1, 0, 0, 0]);
        m.extend_from_slice(b"\x03nas\x04home\x03fpn\x00\x00\x01\x00\x01");
        m
    };
    for cut in 0..good.len() {
        v.push(good[..cut].to_vec());
    }
    // compression loop in the question: pointer to itself
    let mut m = header(2, 0x0100, [1, 0, 0, 0]);
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    v.push(m);
    // two pointers pointing at each other
    let mut m = header(3, 0x0100, [1, 0, 0, 0]);
    m.extend_from_slice(&[0xc0, 0x0e, 0xc0, 0x0c, 0, 1, 0, 1]);
    v.push(m);
    // oversized name: 5 labels of 63 bytes (> 255)
    let mut m = header(4, 0x0100, [1, 0, 0, 0]);
    for _ in 0..5 {
        m.push(63);
        m.extend_from_slice(&[b'a'; 63]);
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    v.push(m);
    // label length 64 (reserved bits)
    let mut m = header(5, 0x0100, [1, 0, 0, 0]);
    m.extend_from_slice(&[0x40, b'a', 0, 0, 1, 0, 1]);
    v.push(m);
    // counts far beyond the data, in every section
    v.push(header(6, 0x0100, [0xffff, 0xffff, 0xffff, 0xffff]));
    // an UPDATE whose TSIG record is cut short, and one with a looping key name
    let mut m = header(7, 0x2800, [1, 0, 0, 1]);
    m.extend_from_slice(b"\x04home\x03fpn\x00\x00\x06\x00\x01");
    m.extend_from_slice(b"\x01k\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x30\x0bhmac-sha256\x00");
    v.push(m.clone());
    let mut m = header(8, 0x2800, [1, 0, 0, 1]);
    m.extend_from_slice(b"\x04home\x03fpn\x00\x00\x06\x00\x01");
    let at = m.len() as u8;
    m.extend_from_slice(&[0xc0, at, 0x00, 0xfa, 0x00, 0xff, 0, 0, 0, 0, 0, 0]);
    v.push(m);
    // EDNS with a huge option length, and a second OPT record
    let mut m = good.clone();
    m[11] = 1;
    m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0xff, 0xff]);
    v.push(m);
    let mut m = good.clone();
    m[11] = 2;
    m.extend_from_slice(&[
        0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0,
    ]);
    v.push(m);
    // a response (never answered), and pseudo-random junk
    let mut m = good.clone();
    m[2] |= 0x80;
    v.push(m);
    let mut x: u32 = 0x1234_5678;
    for len in [12usize, 13, 40, 100, 512, 1500, 4000] {
        let junk = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        v.push(junk);
    }
    v
}

#[test]
fn malformed_packets_get_no_panic_and_the_server_keeps_answering() {
    let s = Setup::new();
    let srv = s.start(&[]);
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    for m in nasty() {
        udp.send_to(&m, srv.addr).expect("send");
        // FORMERR or nothing; drain whatever comes back
        while udp.recv_from(&mut buf).is_ok() {}
    }
    assert_eq!(srv.short("home.fpn.", "NS"), ["ns1.home.fpn."]);

    for m in nasty() {
        let mut tcp = TcpStream::connect(srv.addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_millis(150)))
            .expect("timeout");
        let mut framed = (m.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&m);
        tcp.write_all(&framed).expect("write");
        let _ = tcp.read(&mut buf);
    }
    // a length prefix promising more than is sent, then a half-closed socket
    let mut tcp = TcpStream::connect(srv.addr).expect("connect");
    tcp.write_all(&[0xff, 0xff, 1, 2, 3]).expect("write");
    drop(tcp);
    assert_eq!(srv.short("home.fpn.", "NS"), ["ns1.home.fpn."]);
    assert_eq!(
        srv.dig(&["+tcp", "+short", "home.fpn.", "NS"]).trim(),
        "ns1.home.fpn."
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
}
