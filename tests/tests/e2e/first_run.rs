//! A hub started from nothing: what it creates, and how it stops.

use machinomy_hub::config::FIRST_RUN_CONFIG;
use machinomy_tests::{TestHub, file_mode, http_client, identity_in};
use machinomy_web::model::HubStatus;

/// The first-run config has no `[web]`, `[p2p]` or `[mqtt]`: the daemon listens on the default
/// 127.0.0.1:8080, its peer network on every interface with mDNS, and its MQTT broker on the
/// fixed port 1883. Tests keep to loopback and free ports.
const FREE_PORT: &str = "[web]\nlisten = \"127.0.0.1:0\"\n[p2p]\nenabled = false\n[mqtt]\nmode = \"off\"";

#[tokio::test]
async fn run_from_nothing_creates_config_and_private_keys_then_serves_that_identity() {
    let mut hub = TestHub::first_run().unwrap();
    assert!(!hub.config_path().exists() && !hub.data_dir().exists());

    // With no config, `run` listens on the fixed default port. Hold it, so that the outcome does
    // not depend on whether anything else on this machine has it (if something does, our bind
    // fails and the port is just as taken): the first run must create everything, then say
    // clearly why it cannot serve.
    let held = std::net::TcpListener::bind("127.0.0.1:8080");
    let out = hub.cli(&["run"]).await.unwrap();
    drop(held);
    let line = out.final_error_line().unwrap();
    assert!(line.contains("127.0.0.1:8080") && line.contains("web.listen"), "{line}");
    assert!(line.contains(&hub.config_path().display().to_string()), "names the config file: {line}");

    assert_eq!(std::fs::read_to_string(hub.config_path()).unwrap(), FIRST_RUN_CONFIG);
    let data = hub.data_dir().to_owned();
    assert_eq!(file_mode(&data).unwrap(), 0o700, "the data dir is private");
    assert_eq!(file_mode(&data.join("identity.key")).unwrap(), 0o600);
    assert_eq!(file_mode(&data.join("admin.token")).unwrap(), 0o600);
    assert!(data.join("store").is_dir());
    let identity = identity_in(&data.join("identity.key")).unwrap();

    // The same files, now on a free port.
    hub.append_config(FREE_PORT).unwrap();
    hub.start().await.unwrap();
    let health = http_client().unwrap().get(format!("http://{}/healthz", hub.addr().unwrap())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    let status = hub.cli(&["status"]).await.unwrap();
    let text = status.ok().unwrap();
    assert!(text.contains(&format!("identity   {identity}")), "{text}");
    assert!(text.contains(&format!("http://{}", hub.addr().unwrap())), "{text}");
    let printed = hub.cli(&["identity"]).await.unwrap();
    assert_eq!(printed.ok().unwrap().trim(), identity);
    let json: HubStatus = hub.cli(&["status", "--json"]).await.unwrap().json().unwrap();
    assert_eq!(json.public_key.to_hex(), identity);
    assert_eq!(json.name, "machinomy-hub");

    let exit = hub.stop().await.unwrap();
    assert!(exit.success(), "{exit}\n{}", hub.describe_process());
    assert_eq!(identity_in(&data.join("identity.key")).unwrap(), identity, "the key file is not rewritten");
}

#[tokio::test]
async fn init_creates_everything_and_exits_and_run_keeps_its_identity() {
    let mut hub = TestHub::first_run().unwrap();
    let out = hub.cli(&["init"]).await.unwrap();
    let text = out.ok().unwrap().to_owned();
    assert!(out.stderr.is_empty(), "{out}");
    let config = hub.config_path().display().to_string();
    let data = hub.data_dir().display().to_string();
    assert!(text.contains(&format!("config    created {config}")), "{text}");
    assert!(text.contains(&format!("data dir  created {data}")), "{text}");
    let identity = identity_in(&hub.data_dir().join("identity.key")).unwrap();
    assert!(text.contains(&format!("identity  {identity}")), "{text}");
    assert_eq!(file_mode(&hub.data_dir().join("identity.key")).unwrap(), 0o600);
    assert_eq!(file_mode(&hub.data_dir().join("admin.token")).unwrap(), 0o600);
    assert!(hub.data_dir().join("store").is_dir());
    assert!(!hub.api_addr_file().exists(), "init does not leave a daemon behind");

    // A second init changes nothing.
    let token = hub.token().unwrap();
    let again = hub.cli(&["init"]).await.unwrap();
    let text = again.ok().unwrap();
    assert!(text.contains(&format!("config    exists  {config}")), "{text}");
    assert!(text.contains(&format!("data dir  exists  {data}")), "{text}");
    assert!(text.contains(&format!("identity  {identity}")), "{text}");
    assert_eq!(hub.token().unwrap(), token);

    hub.append_config(FREE_PORT).unwrap();
    hub.start().await.unwrap();
    assert_eq!(hub.cli(&["identity"]).await.unwrap().ok().unwrap().trim(), identity);
    assert!(hub.stop().await.unwrap().success());
}

#[tokio::test]
async fn sigterm_and_sigint_stop_the_hub_cleanly_and_flush_the_books() {
    let mut hub = TestHub::new().unwrap();
    for (signal, name) in [("TERM", "SIGTERM"), ("INT", "SIGINT")] {
        hub.start().await.unwrap();
        assert!(hub.api_addr_file().exists());
        let exit = hub.stop_with(signal).await.unwrap();
        let log = hub.log().unwrap();
        assert_eq!(exit.code(), Some(0), "SIG{signal}: {exit}\n{log}");
        assert!(log.contains(&format!("shutting down reason=\"{name}\"")), "{log}");
        assert!(log.lines().last().unwrap_or_default().contains("stopped; books flushed"), "{log}");
        assert!(!hub.api_addr_file().exists(), "SIG{signal} leaves run/api.addr behind");

        let status = hub.cli(&["status"]).await.unwrap();
        assert!(status.error_line().unwrap().contains("not running"), "{status}");
    }
}
