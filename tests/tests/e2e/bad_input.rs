//! Bad configs and damaged data dirs: the hub refuses with one clear line and touches nothing.

use std::os::unix::fs::PermissionsExt;

use machinomy_tests::{TestHub, file_mode, tree};

/// Everything in the test dir but the logs.
fn snapshot(hub: &TestHub) -> anyhow::Result<Vec<std::path::PathBuf>> {
    Ok(tree(hub.dir())?.into_iter().filter(|p| !p.starts_with("logs")).collect())
}

#[tokio::test]
async fn a_bad_config_is_one_line_naming_the_key_and_the_file_and_creates_nothing() {
    let hub = TestHub::new().unwrap();
    let base = "[hub]\ndata_dir = \"data\"\n";
    let cases = [
        (format!("{base}colour = \"blue\"\n"), "hub.colour"),
        (format!("{base}[web]\nlisten = \"not an address\"\n"), "web.listen"),
        (format!("{base}[web]\nlisten = 8080\n"), "web.listen"),
        (format!("{base}approval_ttl_secs = 0\n"), "hub.approval_ttl_secs"),
        (format!("{base}[ledger.credit]\nmax_credit_per_peer = \"lots\"\n"), "ledger.credit.max_credit_per_peer"),
        (format!("{base}[ledger.credit]\ncurrency = \"us dollars\"\n"), "ledger.credit.currency"),
        (
            format!(
                "{base}[[budget]]\nsubject = \"device:tv\"\nperiod = \"fortnight\"\nlimit = \"1\"\nauto_approve = \"0\"\n"
            ),
            "budget[0].period",
        ),
        (
            format!("{base}[[budget]]\nsubject = \"tv\"\nperiod = \"day\"\nlimit = \"1\"\nauto_approve = \"0\"\n"),
            "budget[0].subject",
        ),
    ];
    let config = hub.config_path().display().to_string();
    for (text, key) in &cases {
        hub.write_config(text).unwrap();
        let before = snapshot(&hub).unwrap();
        for command in ["run", "init", "status"] {
            let out = hub.cli(&[command]).await.unwrap();
            let line = out.error_line().unwrap_or_else(|e| panic!("{command} with {text:?}: {e}"));
            assert!(line.contains(key), "{command} with {text:?} should name {key}: {line}");
            assert!(line.contains(&config), "{command} with {text:?} should name the file: {line}");
            assert_eq!(snapshot(&hub).unwrap(), before, "{command} with {text:?} changed the test dir");
        }
        assert!(!hub.data_dir().exists());
    }

    hub.write_config("[hub\nname = 1\n").unwrap();
    let out = hub.cli(&["run"]).await.unwrap();
    let line = out.error_line().unwrap();
    assert!(line.contains(&config), "a syntax error names the file: {line}");
    assert!(!hub.data_dir().exists());
}

#[tokio::test]
async fn a_corrupt_identity_key_is_refused_and_left_byte_for_byte() {
    let hub = TestHub::new().unwrap();
    hub.cli(&["init"]).await.unwrap().ok().unwrap();
    let key = hub.data_dir().join("identity.key");
    for garbage in [&b"not a key\n"[..], b"abcd\n", &[0xff, 0xfe, 0x00, 0x42][..]] {
        std::fs::write(&key, garbage).unwrap();
        let before = snapshot(&hub).unwrap();
        let out = hub.cli(&["run"]).await.unwrap();
        let line = out.final_error_line().unwrap();
        assert!(line.contains(&key.display().to_string()) && line.contains("corrupt"), "{line}");
        assert_eq!(std::fs::read(&key).unwrap(), garbage, "the key file was changed");
        assert_eq!(file_mode(&key).unwrap(), 0o600);
        assert_eq!(snapshot(&hub).unwrap(), before);
    }
}

#[tokio::test]
async fn a_key_others_can_read_is_refused_not_silently_fixed() {
    let hub = TestHub::new().unwrap();
    hub.cli(&["init"]).await.unwrap().ok().unwrap();
    let key = hub.data_dir().join("identity.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = hub.cli(&["run"]).await.unwrap();
    let line = out.final_error_line().unwrap();
    assert!(line.contains("chmod 600") && line.contains(&key.display().to_string()), "{line}");
    assert_eq!(file_mode(&key).unwrap(), 0o644);
}

#[tokio::test]
async fn a_file_where_the_data_dir_belongs_is_refused() {
    let hub = TestHub::new().unwrap();
    std::fs::write(hub.data_dir(), "my notes").unwrap();
    for command in ["run", "init"] {
        let out = hub.cli(&[command]).await.unwrap();
        let line = out.final_error_line().unwrap();
        assert!(line.contains("not a directory") && line.contains(&hub.data_dir().display().to_string()), "{line}");
        assert_eq!(std::fs::read_to_string(hub.data_dir()).unwrap(), "my notes");
    }
    let stray: Vec<_> =
        snapshot(&hub).unwrap().into_iter().filter(|p| p.to_string_lossy().contains(".init-")).collect();
    assert!(stray.is_empty(), "a staging dir was left behind: {stray:?}");
}

#[tokio::test]
async fn a_data_dir_missing_its_identity_is_not_given_a_new_one() {
    let hub = TestHub::new().unwrap();
    hub.cli(&["init"]).await.unwrap().ok().unwrap();
    std::fs::remove_file(hub.data_dir().join("identity.key")).unwrap();
    let before = snapshot(&hub).unwrap();
    for command in ["run", "init"] {
        let out = hub.cli(&[command]).await.unwrap();
        let line = out.final_error_line().unwrap();
        assert!(line.contains("no identity.key") && line.contains("refusing"), "{line}");
        assert_eq!(snapshot(&hub).unwrap(), before, "{command} changed the data dir");
    }
}

#[tokio::test]
async fn a_data_dir_missing_its_store_is_not_given_empty_books() {
    let hub = TestHub::new().unwrap();
    hub.cli(&["init"]).await.unwrap().ok().unwrap();
    std::fs::remove_dir_all(hub.data_dir().join("store")).unwrap();
    let before = snapshot(&hub).unwrap();
    for command in ["run", "init"] {
        let out = hub.cli(&[command]).await.unwrap();
        let line = out.final_error_line().unwrap();
        assert!(line.contains("no store/") && line.contains("refusing"), "{line}");
        assert_eq!(snapshot(&hub).unwrap(), before, "{command} changed the data dir");
    }
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_is_refused_and_the_first_keeps_running() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let addr = hub.addr().unwrap();
    let out = hub.cli(&["run"]).await.unwrap();
    let line = out.final_error_line().unwrap();
    assert!(line.contains("in use by another hub process"), "{line}");
    assert_eq!(std::fs::read_to_string(hub.api_addr_file()).unwrap().trim(), addr.to_string());
    hub.cli(&["status"]).await.unwrap().ok().unwrap();
    assert!(hub.stop().await.unwrap().success());
}
