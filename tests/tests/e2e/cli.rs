//! The admin CLI around a hub that is not there, and the CLI's own arguments.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use machinomy_core::{Amount, ChannelStatus, Subject};
use machinomy_tests::{TestHub, now, seed_receiver_channel, spend_request};
use machinomy_web::model::ChannelView;
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

    // A running hub whose admin token was deleted (to rotate it): the CLI says so.
    hub.start().await.unwrap();
    let empty = hub.cli(&["approvals", "list", "--all"]).await.unwrap();
    assert_eq!(empty.ok().unwrap(), "no spend requests yet\n");
    let token = hub.data_dir().join("admin.token");
    let saved = std::fs::read(&token).unwrap();
    std::fs::remove_file(&token).unwrap();
    let out = hub.cli(&["status"]).await.unwrap();
    let line = out.error_line().unwrap();
    assert!(line.contains(&format!("no admin token at {}", token.display())), "{line}");
    assert!(line.contains("restarting the hub creates a new one"), "{line}");
    std::fs::write(&token, saved).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    hub.cli(&["status"]).await.unwrap().ok().unwrap();

    // A killed hub leaves its address behind: the CLI says nothing answers there, in one line.
    let addr = hub.addr().unwrap();
    hub.kill().await.unwrap();
    let out = hub.cli(&["status"]).await.unwrap();
    let line = out.error_line().unwrap();
    assert!(line.contains(&format!("the hub is not running (nothing answers at {addr})")), "{line}");
    assert!(line.contains("machinomy-hub run"), "{line}");
    assert_eq!(out.status.code(), Some(1), "{out}");
}

#[tokio::test]
async fn a_fresh_home_is_told_how_to_set_up_a_hub_and_init_speaks_json() {
    let hub = TestHub::first_run().unwrap();
    let out = hub.cli(&["status"]).await.unwrap();
    let line = out.error_line().unwrap();
    let config = hub.config_path().display().to_string();
    assert!(line.contains(&format!("no hub is set up here (no config at {config})")), "{line}");
    assert!(line.contains("machinomy-hub run"), "{line}");
    assert!(!hub.config_path().exists(), "status created the config");

    for created in [true, false] {
        let json: serde_json::Value = hub.cli(&["init", "--json"]).await.unwrap().json().unwrap();
        assert_eq!(json["config"], config.as_str(), "{json}");
        assert_eq!(json["data_dir"], hub.data_dir().display().to_string().as_str(), "{json}");
        assert_eq!(json["identity"].as_str().map(str::len), Some(64), "{json}");
        assert_eq!(json["created_config"], created, "{json}");
        assert_eq!(json["created_data"], created, "{json}");
    }
}

#[tokio::test]
async fn an_io_error_names_its_cause_once() {
    let hub = TestHub::new().unwrap();
    // A directory where the config file should be.
    let dir = hub.dir().display().to_string();
    let out = hub.cli_raw(&["--config", &dir, "status"]).await.unwrap();
    let line = out.error_line().unwrap();
    assert!(line.contains(&dir), "{line}");
    assert_eq!(line.matches("(os error").count(), 1, "{line}");
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
    let set = |limit: &'static str, auto: &'static str| {
        vec!["budget", "set", "device:tv", "--period", "day", "--limit", limit, "--auto-approve", auto]
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["frobnicate"], "frobnicate"),
        (vec!["budget", "set", "device:tv"], "not provided: --period <PERIOD>, --limit <LIMIT>"),
        (vec!["spending", "--by", "colour"], "colour"),
        (vec!["approvals", "approve"], "the following required arguments were not provided: <ID>"),
        (vec!["budget"], "`budget` needs a subcommand: list, set, remove"),
        (vec!["channel"], "`channel` needs a subcommand: list, show, close"),
        (set("-5", "1"), "--limit: amount \"-5\" is not a plain decimal number"),
        (set("1", "-0.5"), "--auto-approve: amount \"-0.5\" is not a plain decimal number"),
        (vec!["budget", "set", "tv", "--period", "day", "--limit", "1", "--auto-approve", "0"], "tv"),
        (vec!["spending", "--from", "2026-02-30"], "--from: \"2026-02-30\" is not a date (YYYY-MM-DD)"),
        (vec!["spending", "--to", "2026-13-01"], "--to: \"2026-13-01\" is not a date"),
        (vec!["spending", "--from", "2026-03-03", "--to", "2026-03-01"], "--from must be before --to"),
        (vec!["channel", "show", "../../budgets"], "\"../../budgets\" is not a channel id (64 hex characters)"),
        (vec!["channel", "close", "xyz"], "\"xyz\" is not a channel id"),
    ];
    // The hub is not even running: a typo is reported as one.
    for (args, says) in &cases {
        let out = hub.cli(args).await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{out}");
        assert!(out.stdout.is_empty(), "{out}");
        // One clear line, like every other error.
        let line = out.error_line().unwrap_or_else(|e| panic!("{e}"));
        assert!(line.contains(says), "{args:?} should say {says:?}: {line}");
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

#[tokio::test]
async fn text_from_devices_and_peers_is_escaped_and_a_closing_channel_says_when_it_settles() {
    let mut hub = TestHub::builder()
        .extra("[[budget]]\nsubject = \"device:tv\"\nperiod = \"day\"\nlimit = \"10\"\nauto_approve = \"0\"")
        .build()
        .unwrap();
    hub.cli(&["init"]).await.unwrap().ok().unwrap();
    let subject: Subject = "device:solar-roof".parse().unwrap();
    let capacity = Amount::from_base_units(5_000_000_000);
    let paid = [Amount::from_base_units(1_500_000_000)];
    let (channel, approval) = hub
        .with_books(async |books| {
            let channel = seed_receiver_channel(books, capacity, &paid, &subject, "power").await?;
            let request = spend_request(
                "device:tv",
                "evil\u{1b}]0;pwned\u{7}\nshop",
                Amount::from_base_units(2),
                "m\u{1b}[2Jemo\r",
            )?;
            let approval = books.payments().request_spend(request, now()).await?;
            anyhow::ensure!(approval.is_pending(), "{approval:?}");
            Ok((channel, approval.id))
        })
        .await
        .unwrap();
    hub.start().await.unwrap();

    // Amounts in currency units, checked against each other before the hub is asked.
    let args = ["budget", "set", "device:tv", "--period", "day", "--limit", "1", "--auto-approve", "2"];
    let out = hub.cli(&args).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(
        out.error_line().unwrap().ends_with("machinomy-hub: --auto-approve 2.00 USD is above --limit 1.00 USD"),
        "{out}"
    );

    // A budget set here can be removed; the one from hub.toml and one that is not there cannot.
    let args = ["budget", "set", "device:lamp", "--period", "week", "--limit", "3", "--auto-approve", "1"];
    hub.cli(&args).await.unwrap().ok().unwrap();
    let removed = hub.cli(&["budget", "remove", "device:lamp"]).await.unwrap();
    assert!(removed.ok().unwrap().starts_with("removed the budget of device:lamp"), "{removed}");
    let listed = hub.cli(&["budget", "list"]).await.unwrap();
    assert!(!listed.ok().unwrap().contains("device:lamp"), "{listed}");
    let again = hub.cli(&["budget", "remove", "device:lamp"]).await.unwrap();
    assert!(again.error_line().unwrap().contains("device:lamp has no budget"), "{again}");
    let managed = hub.cli(&["budget", "remove", "device:tv"]).await.unwrap();
    assert!(managed.error_line().unwrap().contains("set in the config file"), "{managed}");

    let id = approval.to_string();
    let reason = "no\u{1b}[31m\u{202e}way";
    let outputs = [
        hub.cli(&["approvals", "list"]).await.unwrap(),
        hub.cli(&["approvals", "show", &id]).await.unwrap(),
        hub.cli(&["approvals", "deny", &id, "--reason", reason]).await.unwrap(),
        hub.cli(&["approvals", "list", "--all"]).await.unwrap(),
    ];
    for out in &outputs {
        let text = out.ok().unwrap();
        assert!(!text.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']), "{out}");
        // Lists cut a long payee to its column; `show` prints it whole. Escaped either way.
        assert!(text.contains("evil\\u{1b}]0;pw"), "{out}");
        assert!(text.contains("\\u{1b}[2J"), "{out}");
    }
    assert!(outputs[1].ok().unwrap().contains("evil\\u{1b}]0;pwned\\u{7}\\nshop"), "{}", outputs[1]);
    let list = outputs[0].ok().unwrap();
    assert_eq!(list.lines().count(), 2, "a header and one request: {list}");
    assert!(list.lines().next().unwrap().starts_with("ID "), "{list}");
    assert!(outputs[2].ok().unwrap().contains("no\\u{1b}[31m\\u{202e}way"), "{}", outputs[2]);

    let channel_id = channel.id.to_hex();
    hub.cli(&["channel", "close", &channel_id]).await.unwrap().ok().unwrap();
    let view: ChannelView = hub.cli(&["channel", "show", &channel_id, "--json"]).await.unwrap().json().unwrap();
    let ChannelStatus::Closing { settle_after, .. } = view.status else { panic!("{view:?}") };
    let text = hub.cli(&["channel", "show", &channel_id]).await.unwrap();
    let text = text.ok().unwrap();
    let settles = settle_after.date_string();
    assert!(text.contains("settles 1.50 USD after ") && text.contains(&settles), "{text}");
    assert!(hub.stop().await.unwrap().success());
}
