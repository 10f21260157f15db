//! Codec throughput: `cargo bench --bench codec`. One line per case.
//!
//! Measured (2026-11-26, shared 2-core dev VM, bench profile, other builds running):
//!   parse_request (265 B absolute-form head, 7 fields): 2078385 heads/s (481 ns/head)
//!   parse_request+body_kind+keep_alive+parse_absolute: 1567862 heads/s (638 ns/head)
//!   ChunkedDecoder::decode (64 MiB body, 64 KiB chunks, 64 KiB reads): 20849 MB/s
//! The decode figure is memcpy-bound: framing costs one state-machine step per byte of
//! size line, data is a bulk copy.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha::http::chunked::{write_chunk_header, ChunkedDecoder, CHUNK_TRAILER_CRLF, LAST_CHUNK};
use chacha::http::{parse_absolute, parse_request, Parsed};

/// What curl sends through a forward proxy.
const PROXIED_HEAD: &[u8] = b"GET http://origin.example.com:8080/assets/app.js?v=1234 HTTP/1.1\r\n\
Host: origin.example.com:8080\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Proxy-Connection: Keep-Alive\r\n\
If-None-Match: \"5f3c-61a2b3c4d5e6f\"\r\n\
Cache-Control: max-age=0\r\n\r\n";

const BODY_BYTES: usize = 64 << 20;
const CHUNK_BYTES: usize = 64 << 10;
/// Bytes handed to the decoder per "read", like a socket read buffer.
const READ_BYTES: usize = 64 << 10;
const MIN_RUN: Duration = Duration::from_secs(1);

/// Runs `f` in batches until MIN_RUN has passed; returns calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    const BATCH: u64 = 10_000;
    let mut calls = 0u64;
    let start = Instant::now();
    while start.elapsed() < MIN_RUN {
        for _ in 0..BATCH {
            f();
        }
        calls += BATCH;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

fn bench_heads() {
    let per_sec = rate(|| {
        black_box(parse_request(black_box(PROXIED_HEAD)).expect("valid head"));
    });
    println!(
        "parse_request ({} B absolute-form head, 7 fields): {per_sec:.0} heads/s ({:.0} ns/head)",
        PROXIED_HEAD.len(),
        1e9 / per_sec
    );
    let per_sec = rate(|| match parse_request(black_box(PROXIED_HEAD)) {
        Ok(Parsed::Complete(head, n)) => {
            let uri = parse_absolute(&head.target).expect("absolute target");
            let kind = head.body_kind().expect("valid framing");
            black_box((kind, head.keep_alive(), uri, n));
        }
        other => panic!("unexpected {other:?}"),
    });
    println!(
        "parse_request+body_kind+keep_alive+parse_absolute: {per_sec:.0} heads/s ({:.0} ns/head)",
        1e9 / per_sec
    );
}

fn chunked_body() -> Vec<u8> {
    let data: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i % 251) as u8).collect();
    let mut body = Vec::with_capacity(BODY_BYTES + BODY_BYTES / CHUNK_BYTES * 16 + 8);
    for _ in 0..BODY_BYTES / CHUNK_BYTES {
        write_chunk_header(CHUNK_BYTES, &mut body);
        body.extend_from_slice(&data);
        body.extend_from_slice(CHUNK_TRAILER_CRLF);
    }
    body.extend_from_slice(LAST_CHUNK);
    body
}

/// Decodes the whole body per run, fed in READ_BYTES pieces, copying the data out the
/// way a relay copies into its write buffer.
fn bench_chunked(body: &[u8]) {
    let mut runs = 0u32;
    let mut out = Vec::with_capacity(READ_BYTES);
    let start = Instant::now();
    while runs == 0 || start.elapsed() < MIN_RUN {
        let mut dec = ChunkedDecoder::new();
        let mut data_bytes = 0usize;
        for read in body.chunks(READ_BYTES) {
            out.clear();
            let used = dec.decode(black_box(read), &mut out).expect("valid body");
            assert_eq!(used, read.len());
            data_bytes += out.len();
            black_box(&out);
        }
        assert!(dec.is_done() && data_bytes == BODY_BYTES);
        runs += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ChunkedDecoder::decode (64 MiB body, 64 KiB chunks, 64 KiB reads): {:.0} MB/s",
        (BODY_BYTES as f64 * f64::from(runs)) / secs / 1e6
    );
}

fn main() {
    bench_heads();
    bench_chunked(&chunked_body());
}
