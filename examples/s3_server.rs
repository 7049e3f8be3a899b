//! A small S3-protocol server (s3s-fs over a directory) for trying blobcache's
//! S3 mode and for `scripts/bench.sh`; the same server the tests use.
//!
//! `cargo run --release --example s3_server -- DIR [ADDR]` serves the bucket
//! `blobs` from DIR on ADDR (default 127.0.0.1:9000) with the access key
//! `blobcache-test` and the secret `blobcache-test-secret`. By default it
//! answers as fast as it can; to answer at a real S3's pace, set
//! `S3_LATENCY` (time to the first byte of every answer, e.g. `20ms`) and
//! `S3_BANDWIDTH` (bytes per second of each response body, which is per
//! connection, e.g. `90MB`), as `scripts/bench.sh` does. Then:
//!
//! ```text
//! blobcache serve --store s3://blobs/cache --s3-endpoint http://127.0.0.1:9000 --s3-force-path-style \
//!     --s3-access-key-id blobcache-test --s3-secret-access-key blobcache-test-secret
//! ```

// The test suite's S3 server; this example uses only its start-up.
#[allow(dead_code)]
#[path = "../tests/it/common/s3_server.rs"]
mod s3_server;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: s3_server DIR [ADDR]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let addr = addr.parse().unwrap_or_else(|e| {
        eprintln!("s3_server: {addr:?} is not an address: {e}");
        std::process::exit(2);
    });
    let pace = s3_server::Pace {
        latency: setting("S3_LATENCY", |v| {
            humantime::parse_duration(v).map_err(|e| e.to_string())
        }),
        bandwidth: setting("S3_BANDWIDTH", |v| v.parse::<bytesize::ByteSize>().map(|b| b.as_u64())),
    };
    let server = s3_server::S3Server::start_in(std::path::Path::new(&dir), addr).await;
    server.pace(pace);
    println!(
        "serving bucket {} from {dir} at {} (first byte after {:?}, {} bytes/s per connection; 0: unlimited)",
        s3_server::BUCKET,
        server.endpoint(),
        pace.latency,
        pace.bandwidth,
    );
    let _ = tokio::signal::ctrl_c().await;
}

/// An environment setting, parsed; its default when unset.
fn setting<T: Default>(name: &str, parse: impl Fn(&str) -> Result<T, String>) -> T {
    match std::env::var(name) {
        Ok(v) => parse(&v).unwrap_or_else(|e| {
            eprintln!("s3_server: {name}={v:?}: {e}");
            std::process::exit(2);
        }),
        Err(_) => T::default(),
    }
}
