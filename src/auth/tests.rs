use super::*;
use std::time::Duration;

use crate::reload::Reload;

fn auth_with(lines: &str, anonymous: Anonymous) -> (tempfile::TempDir, Auth) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, lines).unwrap();
    let config = AuthConfig {
        tokens: Some(path),
        anonymous,
        metrics_access: MetricsAccess::Open,
    };
    let auth = Auth::open(&config).unwrap();
    (dir, auth)
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

#[test]
fn tokens_are_known_by_their_digest_and_carry_their_scopes() {
    let (reader, writer) = (new_token(), new_token());
    let file = format!(
        "# a comment\n{}\n{}  # trailing comment\n",
        line("ci", &writer, &parse_scopes("read,write").unwrap(), None),
        line("dash", &reader, &parse_scopes("read").unwrap(), None),
    );
    let (_dir, auth) = auth_with(&file, Anonymous::None);
    assert_eq!(auth.len(), 2);
    let ci = auth.identify(Some(&bearer(&writer))).unwrap();
    assert!(auth.allows(&ci, Scope::Write) && auth.allows(&ci, Scope::Read));
    assert!(!auth.allows(&ci, Scope::Delete));
    let dash = auth.identify(Some(&bearer(&reader))).unwrap();
    assert!(!auth.allows(&dash, Scope::Write));
    assert_eq!(auth.identify(Some(&bearer("bc_wrong"))), Err(Refused::Unknown));
    assert_eq!(auth.identify(Some(b"Token abc")), Err(Refused::Malformed));
    assert!(!auth.allows(&Caller::Anonymous, Scope::Read));
    // Basic, with the token as the password (curl -u :TOKEN).
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(":{writer}"))
    );
    assert_eq!(auth.identify(Some(basic.as_bytes())).unwrap(), ci);
}

#[test]
fn admin_implies_all_but_peer_and_expired_tokens_are_refused() {
    let (admin, old) = (new_token(), new_token());
    let past = SystemTime::now() - Duration::from_secs(60);
    let file = format!(
        "{}\n{}\n",
        line("root", &admin, &parse_scopes("admin").unwrap(), None),
        line("old", &old, &parse_scopes("read").unwrap(), Some(past)),
    );
    let (_dir, auth) = auth_with(&file, Anonymous::Read);
    let root = auth.identify(Some(&bearer(&admin))).unwrap();
    for scope in [Scope::Read, Scope::Write, Scope::Delete, Scope::Admin] {
        assert!(auth.allows(&root, scope));
    }
    assert!(!auth.allows(&root, Scope::Peer));
    assert!(matches!(
        auth.identify(Some(&bearer(&old))),
        Err(Refused::Expired { .. })
    ));
    assert!(auth.allows(&Caller::Anonymous, Scope::Read));
    assert!(!auth.allows(&Caller::Anonymous, Scope::Write));
}

#[test]
fn a_bad_file_is_refused_at_start_and_kept_out_on_reload() {
    for bad in [
        "ci nothex read\n",
        "ci 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 fly\n",
        "ci 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
        "ci 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 read tomorrow\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, bad).unwrap();
        let config = AuthConfig {
            tokens: Some(path),
            anonymous: Anonymous::None,
            metrics_access: MetricsAccess::Open,
        };
        let e = Auth::open(&config).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
    let token = new_token();
    let (dir, auth) = auth_with(
        &line("ci", &token, &parse_scopes("read").unwrap(), None),
        Anonymous::None,
    );
    std::fs::write(dir.path().join("tokens"), "garbage\n").unwrap();
    auth.reload();
    assert!(
        auth.identify(Some(&bearer(&token))).is_ok(),
        "a broken file keeps the old tokens"
    );
    std::fs::write(dir.path().join("tokens"), "").unwrap();
    auth.reload();
    assert_eq!(auth.identify(Some(&bearer(&token))), Err(Refused::Unknown), "revoked");
}

#[test]
fn the_digest_is_sha256_of_the_token() {
    assert_eq!(
        hex::encode(digest("test")),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let t = new_token();
    assert!(t.starts_with("bc_") && t.len() == 3 + 43, "{t}");
}
