//! The admin CLI around a hub that is not there, and the CLI's own arguments.

use std::sync::{Arc, Mutex};

use machinomy_tests::TestHub;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn admin_commands_say_the_hub_is_not_running() {
    let mut hub = TestHub::new().unwrap();
    // Before the data dir exists, after init, and after a clean stop.
    let out = hub.cli(&["status"]).await.unwrap();
    assert!(out.error_line().unwrap().contains("not running"), "{out}");
    hub.cli(&["init"]).await.unwrap().ok().unwrap();
    for args in [&["status"][..], &["approvals", "list"], &["channel", "list"], &["spending", "--csv"]] {
        let out = hub.cli(args).await.unwrap();
        let line = out.error_line().unwrap();
        assert!(line.contains("not running") && line.contains("machinomy-hub run"), "{line}");
    }

    // A killed hub leaves its address behind: the CLI says it cannot reach it, in one line.
    hub.start().await.unwrap();
    let addr = hub.addr().unwrap();
    hub.kill().await.unwrap();
    let out = hub.cli(&["status"]).await.unwrap();
    let line = out.error_line().unwrap();
    assert!(line.contains("cannot reach the hub") && line.contains(&addr.to_string()), "{line}");
}

#[tokio::test]
async fn config_is_a_global_flag_before_or_after_the_subcommand() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let config = hub.config_path().display().to_string();
    let before = hub.cli_raw(&["--config", &config, "identity"]).await.unwrap();
    let after = hub.cli_raw(&["identity", "--config", &config]).await.unwrap();
    assert_eq!(before.ok().unwrap(), after.ok().unwrap());
    assert!(hub.stop().await.unwrap().success());
}

#[tokio::test]
async fn usage_errors_exit_non_zero() {
    let hub = TestHub::new().unwrap();
    for args in [&["frobnicate"][..], &["budget", "set", "device:tv"], &["spending", "--by", "colour"]] {
        let out = hub.cli(args).await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{out}");
        assert!(out.stdout.is_empty(), "{out}");
        // One clear line, like every other error.
        assert!(out.stderr.starts_with("machinomy-hub: "), "{out}");
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out}");
    }
}

#[tokio::test]
async fn the_cli_works_without_home_when_given_a_config_that_names_the_data_dir() {
    // A system service may run with no HOME; `--config` with `data_dir` needs none.
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let mut command = hub.command().unwrap();
    command.env_remove("HOME").env_remove("XDG_CONFIG_HOME").env_remove("XDG_DATA_HOME").arg("identity");
    let out = hub.run_to_end(command, &["identity"], machinomy_tests::CLI_DEADLINE).await.unwrap();
    assert!(out.success(), "{out}");
    assert!(hub.stop().await.unwrap().success());
}

#[tokio::test]
async fn the_cli_never_sends_the_admin_token_through_an_http_proxy() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();

    // A "proxy" that records whatever reaches it and hangs up.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder = tokio::spawn({
        let seen = Arc::clone(&seen);
        async move {
            while let Ok((mut socket, _)) = proxy.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                seen.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    });
    for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        hub.set_env(var, &proxy_url);
    }
    let out = hub.cli(&["status"]).await.unwrap();
    recorder.abort();
    let leaked = seen.lock().unwrap().clone();
    assert!(leaked.is_empty(), "the admin API request went to the proxy: {leaked:?}");
    assert!(out.success(), "{out}");
    assert!(hub.stop().await.unwrap().success());
}
