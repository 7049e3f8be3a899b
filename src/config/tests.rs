//! Tests of the configuration: sources, precedence, validation, printing.
use super::*;
use crate::blobs::WriteMode;
use bytesize::ByteSize;

fn parse(args: &[&str]) -> anyhow::Result<ConfigArgs> {
    let mut full = vec!["blobcache", "serve"];
    full.extend_from_slice(args);
    Cli::parse_with_file(full).map(|c| match c.command {
        Command::Serve(a) | Command::CheckConfig(a) => a,
        Command::Client(_) | Command::Token(_) => unreachable!("parsed `serve`"),
    })
}

#[test]
fn defaults() {
    let c = Config::from_settings(Settings::default()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.cache.memory_cache, ByteSize::mib(256));
    assert_eq!(c.cache.disk_cache, ByteSize::gib(4));
    assert_eq!(c.blobs.max_blob_size, ByteSize::gib(5));
    assert_eq!(c.blobs.write_mode, WriteMode::Back);
    assert!(
        c.store.store.starts_with("file:///") && c.store.store.ends_with("blobcache-data/store"),
        "{}",
        c.store.store
    );
}

#[test]
fn sizes_accept_common_units() {
    let a = parse(&[
        "--memory-cache",
        "64MiB",
        "--disk-cache",
        "4GiB",
        "--max-blob-size",
        "1GB",
    ])
    .unwrap();
    let c = a.resolve().unwrap();
    assert_eq!(c.cache.memory_cache.as_u64(), 64 << 20);
    assert_eq!(c.cache.disk_cache.as_u64(), 4 << 30);
    assert_eq!(c.blobs.max_blob_size.as_u64(), 1_000_000_000);
}

#[test]
fn s3_settings_parse_check_and_print_without_secrets() {
    let c = parse(&[
        "--store",
        "s3://droplets/cache",
        "--s3-endpoint",
        "http://minio:secret-in-url@127.0.0.1:9000",
        "--s3-force-path-style",
        "--s3-access-key-id",
        "AKIDEXAMPLE",
        "--s3-secret-access-key",
        "wJalrXUtnFEMI",
        "--s3-part-size",
        "8MiB",
    ])
    .unwrap()
    .resolve()
    .unwrap();
    let s3 = &c.store;
    assert!(s3.s3_force_path_style);
    assert_eq!(s3.s3_part_size, ByteSize::mib(8));
    assert_eq!(s3.s3_multipart_threshold, ByteSize::mib(64));
    assert_eq!(s3.s3_timeout, Duration::from_secs(10));
    let printed = toml::to_string(&c).unwrap();
    assert!(printed.contains("s3-access-key-id = \"AKIDEXAMPLE\""), "{printed}");
    assert!(!printed.contains("wJalrXUtnFEMI") && printed.contains("s3-secret-access-key = \"***\""));
    assert!(!printed.contains("secret-in-url") && printed.contains("http://minio:***@127.0.0.1:9000"));
    let logged = serde_json::to_string(&c).unwrap();
    assert!(!logged.contains("wJalrXUtnFEMI") && !logged.contains("secret-in-url"));

    // The flag alone means true; an explicit value works too.
    let off = parse(&["--s3-force-path-style", "false"]).unwrap().resolve().unwrap();
    assert!(!off.store.s3_force_path_style);

    for (args, flag) in [
        (&["--s3-part-size", "1MiB"][..], "--s3-part-size"),
        (&["--s3-multipart-threshold", "6GiB"][..], "--s3-multipart-threshold"),
        (&["--s3-access-key-id", "AKID"][..], "--s3-secret-access-key"),
        (&["--s3-timeout", "10ms"][..], "--s3-timeout"),
        (
            &[
                "--max-blob-size",
                "100GiB",
                "--spool-size",
                "100GiB",
                "--s3-part-size",
                "5MiB",
            ][..],
            "10000 parts",
        ),
    ] {
        let e = parse(args).unwrap().resolve().unwrap_err().to_string();
        assert!(e.contains(flag), "{args:?}: {e}");
    }
}

#[test]
fn bad_values_name_the_flag() {
    let e = parse(&["--memory-cache", "lots"]).unwrap_err().to_string();
    assert!(e.contains("--memory-cache"), "{e}");
    let e = parse(&["--write-mode", "sideways"]).unwrap_err().to_string();
    assert!(e.contains("--write-mode"), "{e}");
    let e = parse(&["--disk-cache", "1MiB"])
        .unwrap()
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(e.contains("--disk-cache"), "{e}");
}

#[test]
fn printed_configuration_reads_back_exactly() {
    let c = parse(&["--memory-cache", "96MiB", "--disk-cache", "0", "--s3-timeout", "2s"])
        .unwrap()
        .resolve()
        .unwrap();
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("chunk-size = \"4088KiB\""), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printed.toml");
    std::fs::write(&path, &text).unwrap();
    let c2 = parse(&["--config", path.to_str().unwrap()]).unwrap().resolve().unwrap();
    assert_eq!(
        toml::to_string(&c2).unwrap(),
        text,
        "the printed configuration reads back as itself"
    );
    assert_eq!(c2.cache.memory_cache, ByteSize::mib(96));
}

#[test]
fn file_is_below_flags_and_rejects_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "memory-cache = \"32MiB\"\nwrite-mode = \"through\"\nshutdown-grace = \"5s\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let c = parse(&["--config", p, "--memory-cache", "48MiB"])
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(c.cache.memory_cache.as_u64(), 48 << 20, "flag wins over file");
    assert_eq!(c.blobs.write_mode, WriteMode::Through, "file wins over default");
    assert_eq!(c.shutdown_grace, Duration::from_secs(5));

    std::fs::write(&path, "memory-cash = \"32MiB\"\n").unwrap();
    let e = format!("{:#}", parse(&["--config", p]).unwrap_err());
    assert!(e.contains("memory-cash"), "{e}");

    // A bad value in the file is named like the flag, with the file.
    std::fs::write(&path, "memory-cache = \"lots\"\n").unwrap();
    let e = format!("{:#}", parse(&["--config", p]).unwrap_err());
    assert!(e.contains("--memory-cache") && e.contains("c.toml"), "{e}");
}

#[test]
fn cache_control_is_checked_printed_and_read_back() {
    let c = parse(&[]).unwrap().resolve().unwrap();
    assert_eq!(c.http.cache_control, crate::http::DEFAULT_CACHE_CONTROL);
    let printed = toml::to_string(&c).unwrap();
    assert!(
        printed.contains("cache-control = \"public, max-age=31536000, immutable\""),
        "{printed}"
    );

    let c = parse(&["--cache-control", " public, max-age=300 "])
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(c.http.cache_control, "public, max-age=300");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
    let back = parse(&["--config", path.to_str().unwrap()]).unwrap().resolve().unwrap();
    assert_eq!(back.http.cache_control, "public, max-age=300", "read back from a file");

    for bad in ["", "  ", "public,\nX-Injected: 1", "max-age=60,\u{7f}", "privé"] {
        let e = parse(&["--cache-control", bad])
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cache-control"), "{bad:?}: {e}");
    }
    std::fs::write(&path, "cache-control = \"no-store\\u0000\"\n").unwrap();
    let e = format!(
        "{:#}",
        parse(&["--config", path.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap_err()
    );
    assert!(e.contains("--cache-control"), "{e}");
}
