//! The plugin host against real modules written in WAT: hostile ones (loops, memory bombs,
//! huge publishes, calls outside their grants, spends over budget, modules that cannot run)
//! beside a well-behaved one that must keep running; upgrades, restarts, and a sold service.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use machinomy_core::plugin::{Ceiling, PluginState};
use machinomy_core::{Amount, ApprovalState, Budget, Period, PublicKey, SigningKey, Subject, Verdict};
use machinomy_hub::plugin::{
    Installed, Overrides, Package, PluginDeps, PluginError, PluginSettings, PluginTasks, PluginView, Plugins,
};
use machinomy_hub::testing::{InProcessHub, loopback_p2p};
use machinomy_sdk::abi;

/// Every test module's imports, allocator and ABI version; `$body` adds the entry points.
fn module(memory_pages: u32, body: &str) -> Vec<u8> {
    module_speaking(abi::ABI_VERSION, memory_pages, body)
}

/// [`module`], its `machinomy_abi_version` returning `abi_version`.
fn module_speaking(abi_version: i32, memory_pages: u32, body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  (import "machinomy" "log" (func $log (param i32 i32 i32)))
  (import "machinomy" "publish" (func $publish (param i32 i32 i32 i32 i32) (result i32)))
  (import "machinomy" "subscribe" (func $subscribe (param i32 i32) (result i32)))
  (import "machinomy" "set_timer" (func $set_timer (param i64 i32) (result i64)))
  (import "machinomy" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "machinomy" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (import "machinomy" "spend" (func $spend (param i32 i32 i32 i32 i32 i32) (result i64)))
  (import "machinomy" "call_service" (func $call_service (param i32 i32 i32 i32 i32 i32) (result i64)))
  (import "machinomy" "config" (func $config (param i32 i32) (result i32)))
  (memory (export "memory") {memory_pages})
  ;; Scratch for the host's arguments: one buffer from 32 KiB, reused by every event.
  (func (export "machinomy_abi_version") (result i32) i32.const {abi_version})
  (func (export "machinomy_alloc") (param $n i32) (result i32)
    (if (result i32) (i32.le_u (local.get $n) (i32.const 16384)) (then i32.const 32768) (else i32.const 0)))
  ;; Stores an i32 under the one-byte key at address 200 ("r").
  (data (i32.const 200) "r")
  (func $remember (param $v i32)
    (i32.store (i32.const 208) (local.get $v))
    (drop (call $kv_set (i32.const 200) (i32.const 1) (i32.const 208) (i32.const 4))))
  {body}
)"#
    );
    wat::parse_str(&text).expect("test module")
}

/// A plugin that counts its timer ticks in its storage under "n".
fn counter() -> Vec<u8> {
    module(
        1,
        r#"
  (data (i32.const 100) "n")
  (func (export "on_start") (drop (call $set_timer (i64.const 20) (i32.const 1))))
  (func (export "on_timer") (param i64)
    (i64.store (i32.const 0) (i64.const 0))
    (drop (call $kv_get (i32.const 100) (i32.const 1) (i32.const 0) (i32.const 8)))
    (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.const 1)))
    (drop (call $kv_set (i32.const 100) (i32.const 1) (i32.const 0) (i32.const 8))))
"#,
    )
}

fn manifest(name: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"test plugin\"\n{extra}\n")
}

fn package(name: &str, extra: &str, wasm: Vec<u8>) -> Package {
    Package { manifest: manifest(name, extra), wasm }
}

struct Harness {
    dir: tempfile::TempDir,
    hub: Option<InProcessHub>,
    plugins: Plugins,
    tasks: Option<PluginTasks>,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (hub, plugins, tasks) = Self::open(dir.path(), SigningKey::from_bytes(&[9; 32])).await;
        Harness { dir, hub: Some(hub), plugins, tasks: Some(tasks) }
    }

    async fn open(dir: &Path, key: SigningKey) -> (InProcessHub, Plugins, PluginTasks) {
        let p2p = loopback_p2p(Vec::new(), Amount::from_base_units(1_000_000));
        let hub =
            InProcessHub::start(&dir.join("store"), key, Vec::new(), &[], Amount::from_base_units(1_000_000), p2p)
                .await
                .unwrap();
        let (plugins, tasks) = Plugins::start(settings(dir), deps(&hub)).await.unwrap();
        (hub, plugins, tasks)
    }

    fn hub(&self) -> &InProcessHub {
        self.hub.as_ref().unwrap()
    }

    /// Stops everything and starts again on the same data.
    async fn restart(&mut self) {
        self.restart_after(|_| {}).await;
    }

    /// Stops everything, lets `meanwhile` change the data dir, and starts again on it.
    async fn restart_after(&mut self, meanwhile: impl FnOnce(&Path)) {
        self.tasks.take().unwrap().shutdown().await;
        self.hub.take().unwrap().stop().await;
        meanwhile(self.dir.path());
        let (hub, plugins, tasks) = Self::open(self.dir.path(), SigningKey::from_bytes(&[9; 32])).await;
        self.hub = Some(hub);
        self.plugins = plugins;
        self.tasks = Some(tasks);
    }

    async fn stop(mut self) {
        self.tasks.take().unwrap().shutdown().await;
        self.hub.take().unwrap().stop().await;
    }

    fn kv(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        self.hub().payments.store().plugin_kv_get(plugin, key.as_bytes()).unwrap()
    }

    fn counted(&self, plugin: &str) -> u64 {
        self.kv(plugin, "n").map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap()))
    }

    fn remembered(&self, plugin: &str) -> Option<i32> {
        self.kv(plugin, "r").map(|v| i32::from_le_bytes(v[..4].try_into().unwrap()))
    }

    async fn install(&self, package: Package) -> PluginView {
        match self.plugins.install(package, Overrides::new()).await.unwrap() {
            Installed::Ready(view) => view,
            other => panic!("not ready: {other:?}"),
        }
    }

    async fn show(&self, name: &str) -> PluginView {
        self.plugins.show(name).await.unwrap()
    }
}

fn settings(dir: &Path) -> PluginSettings {
    PluginSettings { dir: dir.join("plugins"), ceiling: Ceiling::default() }
}

fn deps(hub: &InProcessHub) -> PluginDeps {
    PluginDeps {
        store: hub.payments.store().clone(),
        payments: hub.payments.clone(),
        market: hub.market.clone(),
        devices: hub.devices.clone(),
        bridge: None,
    }
}

/// Polls `check` until it gives a value; fails after 30 s with `what`.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn quarantined(h: &Harness, name: &str) -> String {
    eventually(&format!("{name} to be quarantined"), async || match h.show(name).await.state {
        PluginState::Quarantined { reason } => Some(reason),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_stopped_and_quarantined_while_a_good_one_keeps_running() {
    let h = Harness::start().await;
    h.install(package("good", "", counter())).await;
    eventually("the good plugin to count", async || (h.counted("good") > 0).then_some(())).await;

    // An infinite loop in every timer event: out of fuel, three times, quarantined.
    let looper = module(
        1,
        r#"
  (func (export "on_start") (drop (call $set_timer (i64.const 10) (i32.const 1))))
  (func (export "on_timer") (param i64) (loop $forever (br $forever)))
"#,
    );
    h.install(package("looper", "[limits]\nfuel_per_event = 2000000", looper)).await;

    // A memory bomb: grows far past its 16 MiB limit.
    let bomb = module(
        1,
        r#"
  (func (export "on_start") (drop (call $set_timer (i64.const 10) (i32.const 1))))
  (func (export "on_timer") (param i64) (drop (memory.grow (i32.const 1000))))
"#,
    );
    h.install(package("bomb", "", bomb)).await;

    // A 10 MB publish: refused with ERR_TOO_LARGE, and the plugin carries on.
    let big = module(
        200,
        r#"
  (data (i32.const 300) "plugins/big/out")
  (func (export "on_start")
    (call $remember (call $publish (i32.const 300) (i32.const 15) (i32.const 65536) (i32.const 10485760) (i32.const 0))))
"#,
    );
    h.install(package("big", "[grants]\npublish = [\"plugins/big/#\"]", big)).await;

    // A subscription outside its grants.
    let nosy = module(
        1,
        r#"
  (data (i32.const 300) "machinomy/door/#")
  (func (export "on_start") (call $remember (call $subscribe (i32.const 300) (i32.const 16))))
"#,
    );
    h.install(package("nosy", "[grants]\nsubscribe = [\"machinomy/fridge/#\"]", nosy)).await;

    // Over quota: 4 KiB allowed, 8 KiB asked.
    let hog = module(
        1,
        r#"
  (data (i32.const 300) "big")
  (func (export "on_start") (call $remember (call $kv_set (i32.const 300) (i32.const 3) (i32.const 1024) (i32.const 8192))))
"#,
    );
    h.install(package("hog", "[limits]\nkv_bytes = 4096", hog)).await;

    for name in ["looper", "bomb"] {
        let reason = quarantined(&h, name).await;
        let expected = if name == "looper" { "fuel" } else { "memory" };
        assert!(reason.contains(expected) && reason.contains("3 faults"), "{name}: {reason}");
        let view = h.show(name).await;
        assert!(!view.running && view.timers == 0, "a quarantined plugin keeps nothing running");
    }
    assert_eq!(h.remembered("big"), Some(abi::ERR_TOO_LARGE));
    assert_eq!(h.remembered("nosy"), Some(abi::ERR_NOT_GRANTED));
    assert_eq!(h.remembered("hog"), Some(abi::ERR_QUOTA));
    assert!(h.kv("hog", "big").is_none(), "nothing over quota is stored");
    let nosy = h.show("nosy").await;
    assert_eq!((nosy.state, nosy.refused), (PluginState::Enabled, 1));
    assert!(nosy.recent.iter().any(|l| l.text.contains("subscribe to machinomy/door/#")), "{:?}", nosy.recent);
    let big = h.show("big").await;
    assert_eq!(big.state, PluginState::Enabled);
    assert!(big.recent.iter().any(|l| l.text.contains("10485760")), "{:?}", big.recent);

    // The good plugin kept counting through all of it.
    let before = h.counted("good");
    eventually("the good plugin to keep counting", async || (h.counted("good") > before + 2).then_some(())).await;
    assert_eq!(h.show("good").await.faults, 0);

    // The owner re-enables a quarantined plugin: it runs again (until it faults again).
    let view = h.plugins.set_enabled("looper", true).await.unwrap();
    assert!(view.running && view.faults == 0, "{view:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_over_the_plugins_budget_waits_for_the_owner_and_a_denial_reaches_the_plugin() {
    let h = Harness::start().await;
    let peer = PublicKey::from(SigningKey::from_bytes(&[3; 32]).verifying_key()).to_hex();
    let spender = module(
        1,
        &format!(
            r#"
  (data (i32.const 300) "{peer}")
  (data (i32.const 400) "5000")
  (data (i32.const 410) "too much")
  (func (export "on_start")
    (drop (call $spend (i32.const 300) (i32.const 64) (i32.const 400) (i32.const 4) (i32.const 410) (i32.const 8))))
  ;; Remembers each status as it comes: pending (1), then denied (2).
  (func (export "on_spend_result") (param i64 i32 i32 i32) (call $remember (local.get 1)))
"#
        ),
    );
    let grants = "[grants]\npay = true\n[grants.budget]\nperiod = \"day\"\nlimit = \"1000\"\nauto_approve = \"100\"";
    h.install(package("spender", grants, spender)).await;
    let pending = eventually("the spend to wait for the owner", async || {
        let approvals = h.hub().payments.approvals(true, machinomy_hub::now()).await.unwrap();
        approvals.into_iter().find(|a| a.request.subject == Subject::Plugin("spender".into()))
    })
    .await;
    assert_eq!(pending.request.amount, Amount::from_base_units(5000));
    eventually("pending to reach the plugin", async || {
        (h.remembered("spender") == Some(abi::STATUS_PENDING)).then_some(())
    })
    .await;
    h.hub()
        .payments
        .decide(pending.id, Verdict::Deny { reason: "no".into() }, "owner", machinomy_hub::now())
        .await
        .unwrap();
    eventually("the denial to reach the plugin", async || {
        (h.remembered("spender") == Some(abi::STATUS_DENIED)).then_some(())
    })
    .await;
    let budget: Vec<Budget> = h.hub().payments.budgets().unwrap();
    assert!(budget.iter().any(|b| b.subject == Subject::Plugin("spender".into()) && b.period == Period::Day));

    // Started again, it asks again; removed, its waiting spend is denied and its budget goes.
    h.plugins.set_enabled("spender", false).await.unwrap();
    h.plugins.set_enabled("spender", true).await.unwrap();
    let waiting = eventually("the second spend to wait", async || {
        let approvals = h.hub().payments.approvals(true, machinomy_hub::now()).await.unwrap();
        approvals.into_iter().find(|a| a.request.subject == Subject::Plugin("spender".into()))
    })
    .await;
    h.plugins.remove("spender").await.unwrap();
    let denied = h.hub().payments.approval(waiting.id, machinomy_hub::now()).await.unwrap();
    assert!(
        matches!(&denied.state, ApprovalState::Denied { reason, .. } if reason == "the plugin was removed"),
        "{denied:?}"
    );
    let budgets: Vec<Budget> = h.hub().payments.budgets().unwrap();
    assert!(budgets.iter().all(|b| b.subject != Subject::Plugin("spender".into())), "{budgets:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spends_waiting_for_the_owner_over_a_hub_restart_are_still_carried_out_and_told_to_the_plugin() {
    let mut h = Harness::start().await;
    let peer = PublicKey::from(SigningKey::from_bytes(&[3; 32]).verifying_key()).to_hex();
    let patient = module(
        1,
        &format!(
            r#"
  (data (i32.const 300) "{peer}")
  (data (i32.const 400) "5000")
  (data (i32.const 410) "first")
  (data (i32.const 420) "second")
  (data (i32.const 430) "ids")
  ;; Spends twice in its first run only, keeping both request ids under "ids".
  (func (export "on_start")
    (if (i32.lt_s (call $kv_get (i32.const 430) (i32.const 3) (i32.const 500) (i32.const 16)) (i32.const 0))
      (then
        (i64.store (i32.const 500)
          (call $spend (i32.const 300) (i32.const 64) (i32.const 400) (i32.const 4) (i32.const 410) (i32.const 5)))
        (i64.store (i32.const 508)
          (call $spend (i32.const 300) (i32.const 64) (i32.const 400) (i32.const 4) (i32.const 420) (i32.const 6)))
        (drop (call $kv_set (i32.const 430) (i32.const 3) (i32.const 500) (i32.const 16))))))
  ;; Each outcome's status, stored under its request id (8 bytes, little-endian).
  (func (export "on_spend_result") (param $id i64) (param $status i32) (param i32 i32)
    (i64.store (i32.const 600) (local.get $id))
    (i32.store (i32.const 608) (local.get $status))
    (drop (call $kv_set (i32.const 600) (i32.const 8) (i32.const 608) (i32.const 4))))
"#
        ),
    );
    let grants = "[grants]\npay = true\n[grants.budget]\nperiod = \"day\"\nlimit = \"100000\"\nauto_approve = \"100\"";
    h.install(package("patient", grants, patient)).await;
    let ids = eventually("the request ids", async || h.kv("patient", "ids")).await;
    let ids = [i64::from_le_bytes(ids[..8].try_into().unwrap()), i64::from_le_bytes(ids[8..].try_into().unwrap())];
    assert!(ids[0] > 0 && ids[1] > 0 && ids[0] != ids[1], "{ids:?}");
    let status = |h: &Harness, id: i64| {
        let stored = h.hub().payments.store().plugin_kv_get("patient", &id.to_le_bytes()).unwrap();
        stored.map(|v| i32::from_le_bytes(v[..4].try_into().unwrap()))
    };
    for id in ids {
        eventually("pending to reach the plugin", async || (status(&h, id) == Some(abi::STATUS_PENDING)).then_some(()))
            .await;
    }

    // The hub restarts with both spends still waiting for the owner.
    h.restart().await;
    let waiting = h.hub().payments.approvals(true, machinomy_hub::now()).await.unwrap();
    let find = |memo: &str| waiting.iter().find(|a| a.request.memo == memo).map(|a| a.id).unwrap();
    let (first, second) = (find("first"), find("second"));

    // Denied: the plugin hears it under the id it was given before the restart.
    h.hub().payments.decide(first, Verdict::Deny { reason: "no".into() }, "owner", machinomy_hub::now()).await.unwrap();
    eventually("the denial", async || (status(&h, ids[0]) == Some(abi::STATUS_DENIED)).then_some(())).await;

    // Approved: the hub pays from what the approval holds. The payee is no hub it can reach, so
    // the payment fails, the plugin hears so, and the budget is released.
    h.hub().payments.decide(second, Verdict::Approve, "owner", machinomy_hub::now()).await.unwrap();
    eventually("the failure", async || (status(&h, ids[1]) == Some(abi::STATUS_FAILED)).then_some(())).await;
    let approval = h.hub().payments.approval(second, machinomy_hub::now()).await.unwrap();
    assert!(matches!(approval.outcome, Some(machinomy_core::SpendOutcome::Failed { .. })), "{approval:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_and_manifests_that_cannot_run_are_refused_at_install_and_leave_nothing() {
    let h = Harness::start().await;
    let refuse = async |package: Package, expected: &str| {
        let error = h.plugins.install(package, Overrides::new()).await.expect_err(expected);
        assert!(error.to_string().contains(expected), "expected {expected:?} in {error}");
    };
    refuse(package("notwasm", "", b"#!/bin/sh\nrm -rf /\n".to_vec()), "not a WebAssembly module").await;
    let teleport = wat::parse_str(
        r#"(module (import "machinomy" "teleport" (func)) (memory (export "memory") 1)
           (func (export "machinomy_abi_version") (result i32) i32.const 1)
           (func (export "machinomy_alloc") (param i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    refuse(package("teleport", "", teleport), "machinomy::teleport, which this hub does not provide").await;
    let wasi = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
           (memory (export "memory") 1))"#,
    )
    .unwrap();
    refuse(package("wasi", "", wasi), "may only import from \"machinomy\"").await;
    let no_version = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "machinomy_alloc") (param i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    refuse(package("noversion", "", no_version), "(did the plugin call `machinomy_sdk::export_plugin!`?)").await;
    refuse(package("abi2", "", module_speaking(2, 1, "")), "it speaks plugin ABI 2; this hub speaks 1").await;
    let no_alloc = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "machinomy_abi_version") (result i32) i32.const 1))"#,
    )
    .unwrap();
    refuse(package("noalloc", "", no_alloc), "does not export machinomy_alloc").await;
    let bad_signature = module(1, r#"(func (export "on_timer") (param i32))"#);
    refuse(package("badsig", "", bad_signature), "on_timer has the wrong signature").await;
    refuse(package("huge", "", module(1000, "")), "above its limit of 16 MiB").await;
    refuse(package("greedy", "[grants]\nsubscribe = [\"#\"]", counter()), "grants.subscribe[0]").await;
    refuse(package("typo", "[grants]\nsubscibe = [\"a/b\"]", counter()), "subscibe").await;
    refuse(package("Bad Name", "", counter()), "plugin name").await;
    refuse(package("fat", "[limits]\nmemory_mib = 100000", counter()), "ceiling").await;
    refuse(package("spendy", "[grants]\npay = true", counter()), "grants.budget").await;

    assert!(h.plugins.list().await.unwrap().is_empty());
    let leftovers: Vec<PathBuf> =
        std::fs::read_dir(h.dir.path().join("plugins")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(leftovers.is_empty(), "refused installs left files: {leftovers:?}");

    // A plugin may be installed only once; unknown names are errors.
    h.install(package("once", "", counter())).await;
    assert!(matches!(
        h.plugins.install(package("once", "", counter()), Overrides::new()).await,
        Err(PluginError::Exists(_))
    ));
    assert!(matches!(h.plugins.show("nobody").await, Err(PluginError::Unknown(_))));
    assert!(matches!(h.plugins.set_enabled("nobody", true).await, Err(PluginError::Unknown(_))));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_asking_for_more_waits_for_the_owner_while_the_old_version_runs() {
    let h = Harness::start().await;
    let v = |version: &str, grants: &str| Package {
        manifest: format!("name = \"up\"\nversion = \"{version}\"\n{grants}\n"),
        wasm: counter(),
    };
    h.install(v("1.0.0", "[grants]\nsubscribe = [\"machinomy/+/state\"]")).await;
    // Narrower: applied at once.
    let Installed::Ready(view) = h
        .plugins
        .upgrade(v("1.1.0", "[grants]\nsubscribe = [\"machinomy/fridge/state\"]"), Overrides::new())
        .await
        .unwrap()
        .installed
    else {
        panic!("a narrower upgrade waits")
    };
    assert_eq!(view.version, "1.1.0");
    // Wider than what is approved now (1.1.0's grants): waits.
    let wider = "[grants]\nsubscribe = [\"machinomy/+/state\"]\npublish = [\"machinomy/fridge/cmd/#\"]";
    let Installed::AwaitingApproval(view) =
        h.plugins.upgrade(v("2.0.0", wider), Overrides::new()).await.unwrap().installed
    else {
        panic!("a wider upgrade was applied without the owner")
    };
    assert_eq!(view.version, "1.1.0");
    assert!(view.running);
    let asks = &view.pending_upgrade.as_ref().unwrap().asks_for;
    assert_eq!(asks.len(), 2, "{asks:?}");
    assert!(asks.iter().any(|a| a == "publish on machinomy/fridge/cmd/#"));
    let approved = h.plugins.approve("up").await.unwrap();
    assert_eq!((approved.version.as_str(), approved.pending_upgrade.is_none()), ("2.0.0", true));
    assert!(approved.grants.may_publish("machinomy/fridge/cmd/open"));
    assert!(matches!(h.plugins.approve("up").await, Err(PluginError::NothingToApprove(_))));
    let wrong = Package { manifest: manifest("other", ""), wasm: counter() };
    assert!(matches!(h.plugins.upgrade(wrong, Overrides::new()).await, Err(PluginError::Unknown(_))));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_come_back_after_a_restart_from_their_compiled_cache_keeping_storage_and_state() {
    let mut h = Harness::start().await;
    h.install(package("counter", "", counter())).await;
    h.install(package("resting", "", counter())).await;
    h.plugins.set_enabled("resting", false).await.unwrap();
    eventually("a count", async || (h.counted("counter") > 0).then_some(())).await;
    let compiled: Vec<PathBuf> = std::fs::read_dir(h.dir.path().join("plugins/counter"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(compiled.len(), 1);
    let written = std::fs::metadata(&compiled[0]).unwrap().modified().unwrap();

    h.restart().await;
    let before = h.counted("counter");
    assert!(before > 0, "storage survives");
    eventually("counting to resume", async || (h.counted("counter") > before).then_some(())).await;
    assert_eq!(std::fs::metadata(&compiled[0]).unwrap().modified().unwrap(), written, "it was compiled again");
    assert_eq!(h.show("resting").await.state, PluginState::Disabled);
    assert!(!h.show("resting").await.running);

    // Removing deletes its files and storage.
    h.plugins.remove("counter").await.unwrap();
    assert!(!h.dir.path().join("plugins/counter").exists());
    assert!(h.kv("counter", "n").is_none());
    assert!(matches!(h.plugins.show("counter").await, Err(PluginError::Unknown(_))));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_sells_a_service_that_a_peer_buys() {
    let seller = Harness::start().await;
    // Answers every call with "pong:" and the caller's body.
    let echo = wat::parse_str(
        r#"(module
  (import "machinomy" "respond" (func $respond (param i64 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "pong:")
  (func (export "machinomy_abi_version") (result i32) i32.const 1)
  (func (export "machinomy_alloc") (param $n i32) (result i32) i32.const 32768)
  (func (export "on_service_call") (param $call i64) (param $sp i32) (param $sl i32) (param $bp i32) (param $bl i32) (param $fp i32) (param $fl i32)
    (memory.copy (i32.const 5) (local.get $bp) (local.get $bl))
    (drop (call $respond (local.get $call) (i32.const 1) (i32.const 0) (i32.add (local.get $bl) (i32.const 5))))))"#,
    )
    .unwrap();
    let sells = "[[grants.sell]]\nservice = \"echo\"\nprice = \"25\"\ndescription = \"says it back\"";
    seller.install(package("echo", sells, echo)).await;

    let buyer_dir = tempfile::tempdir().unwrap();
    let addrs = seller.hub().addrs().await.unwrap();
    let buyer_budget = Budget::new(
        Subject::Device("tester".into()),
        Period::Day,
        Amount::from_base_units(1000),
        Amount::from_base_units(100),
    )
    .unwrap();
    let buyer = InProcessHub::start(
        buyer_dir.path(),
        SigningKey::from_bytes(&[4; 32]),
        Vec::new(),
        &[buyer_budget],
        Amount::from_base_units(1_000_000),
        loopback_p2p(addrs, Amount::from_base_units(10_000)),
    )
    .await
    .unwrap();
    // The daemon announces when plugins' offers change; here the test does.
    let offer = eventually("the plugin's offer to be found", async || {
        let _ = seller.hub().market.announce().await;
        buyer.market.quote("echo").await.ok()
    })
    .await;
    assert_eq!(offer.price, Amount::from_base_units(25));
    let bought = buyer.market.call("echo", b"ping".to_vec(), &Subject::Device("tester".into())).await.unwrap();
    assert_eq!(bought.body, b"pong:ping");
    assert_eq!(bought.price, Amount::from_base_units(25));
    let income: Amount = seller
        .hub()
        .payments
        .spending(None, None)
        .unwrap()
        .iter()
        .filter(|e| e.subject == Subject::Plugin("echo".into()))
        .fold(Amount::ZERO, |sum, e| sum.checked_add(e.amount).unwrap());
    assert_eq!(income, Amount::from_base_units(25), "the income is booked to the plugin");

    // Disabled, it sells nothing.
    seller.plugins.set_enabled("echo", false).await.unwrap();
    assert!(buyer.market.call("echo", b"ping".to_vec(), &Subject::Device("tester".into())).await.is_err());
    buyer.stop().await;
    seller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_speaking_another_abi_is_refused_at_upgrade_and_one_installed_before_is_quarantined() {
    let mut h = Harness::start().await;
    h.install(package("legacy", "", counter())).await;
    h.install(package("steady", "", counter())).await;

    // Refused at upgrade with the install's words; the running version stays.
    let newer = Package { manifest: manifest("steady", "").replace("1.0.0", "1.1.0"), wasm: module_speaking(2, 1, "") };
    let error = h.plugins.upgrade(newer, Overrides::new()).await.expect_err("an ABI 2 upgrade");
    assert!(error.to_string().contains("it speaks plugin ABI 2; this hub speaks 1"), "{error}");
    let steady = h.show("steady").await;
    assert_eq!((steady.version.as_str(), steady.running), ("1.0.0", true));

    // One installed before the hub checked at install: its module is swapped for an ABI 2 one.
    h.restart_after(|dir| {
        for entry in std::fs::read_dir(dir.join("plugins/legacy")).unwrap() {
            let path = entry.unwrap().path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("wasm") => std::fs::write(&path, module_speaking(2, 1, "")).unwrap(),
                _ => std::fs::remove_file(&path).unwrap(),
            }
        }
    })
    .await;
    let reason = quarantined(&h, "legacy").await;
    assert!(reason.contains("it speaks plugin ABI 2; this hub speaks 1"), "{reason}");
    assert!(!h.show("legacy").await.running, "never reported as running");
    // Enabling it cannot make it run: it is quarantined again at once, with the same reason.
    let view = h.plugins.set_enabled("legacy", true).await.unwrap();
    assert!(!view.running, "{view:?}");
    assert!(matches!(&view.state, PluginState::Quarantined { reason } if reason.contains("plugin ABI 2")), "{view:?}");
    assert!(h.show("steady").await.running);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_log_and_refusals_survive_quarantine_disable_enable_and_a_hub_restart() {
    let mut h = Harness::start().await;
    // Logs, is refused twice, calls spend with a bad payee, and traps on every timer.
    let moody = module(
        1,
        &format!(
            r#"
  (data (i32.const 300) "machinomy/door/#")
  (data (i32.const 400) "hello from moody")
  (data (i32.const 500) "weather.forecast")
  (data (i32.const 520) "99999999")
  (data (i32.const 540) "zz")
  (data (i32.const 550) "10")
  (func (export "on_start")
    (call $log (i32.const {info}) (i32.const 400) (i32.const 16))
    (drop (call $subscribe (i32.const 300) (i32.const 16)))
    (drop (call $call_service (i32.const 500) (i32.const 16) (i32.const 0) (i32.const 0) (i32.const 520) (i32.const 8)))
    (drop (call $spend (i32.const 540) (i32.const 2) (i32.const 550) (i32.const 2) (i32.const 0) (i32.const 0)))
    (drop (call $set_timer (i64.const 10) (i32.const 1))))
  (func (export "on_timer") (param i64) unreachable)
"#,
            info = abi::LOG_INFO
        ),
    );
    let grants = "[grants]\n[[grants.call]]\nservice = \"weather.forecast\"\nmax_price = \"2000\"\n\
                  [grants.budget]\nperiod = \"day\"\nlimit = \"100000\"\nauto_approve = \"100\"";
    h.install(package("moody", grants, moody)).await;
    quarantined(&h, "moody").await;
    let before = h.show("moody").await;
    let texts = |view: &PluginView| view.recent.iter().map(|l| l.text.clone()).collect::<Vec<_>>();
    let logged = texts(&before);
    assert_eq!(before.refused, 2, "{logged:?}");
    assert!(logged.contains(&"hello from moody".to_owned()), "{logged:?}");
    assert!(logged.contains(&"subscribe to machinomy/door/#".to_owned()), "{logged:?}");
    // Amounts in the hub's currency, as everywhere else the owner reads them.
    let buy = "buy weather.forecast at up to 0.099999999 USD (granted up to 0.000002 USD)";
    assert!(logged.contains(&buy.to_owned()), "{logged:?}");
    // Which argument was invalid, which the ABI's ERR_INVALID cannot say.
    assert!(logged.iter().any(|l| l.starts_with("spend: the payee is not a peer's public key")), "{logged:?}");
    assert_eq!(before.recent.iter().filter(|l| l.level == "fault").count(), 3, "{logged:?}");

    let disabled = h.plugins.set_enabled("moody", false).await.unwrap();
    assert_eq!((disabled.refused, disabled.recent.clone()), (2, before.recent.clone()));
    let enabled = h.plugins.set_enabled("moody", true).await.unwrap();
    assert!(enabled.refused >= 2, "{enabled:?}");
    assert!(enabled.recent.starts_with(&before.recent), "the log goes on: {:?}", texts(&enabled));
    assert!(enabled.recent.len() > before.recent.len(), "the new run logs too");

    // A clean restart of the hub keeps what the owner reads.
    let stopped = h.plugins.set_enabled("moody", false).await.unwrap();
    h.restart().await;
    let after = h.show("moody").await;
    assert_eq!((after.refused, texts(&after)), (stopped.refused, texts(&stopped)));
    assert_eq!(after.recent, stopped.recent);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_may_go_back_names_a_waiting_upgrade_it_replaces_and_keeps_the_owners_config() {
    let h = Harness::start().await;
    let v = |version: &str, grants: &str, wasm: Vec<u8>| Package {
        manifest: format!("name = \"up\"\nversion = \"{version}\"\n{grants}\n[config]\na = 0\nb = 0\n"),
        wasm,
    };
    let set = |key: &str, value: i64| Overrides::from([(key.to_owned(), serde_json::json!(value))]);
    let Installed::Ready(_) = h.plugins.install(v("0.3.0", "", counter()), set("a", 1)).await.unwrap() else {
        panic!("not ready")
    };

    // Back to an older version: allowed, and the answer says from which.
    let back = h.plugins.upgrade(v("0.1.0", "", counter()), set("b", 2)).await.unwrap();
    assert_eq!((back.from_version.as_str(), back.replaced.clone()), ("0.3.0", None));
    let Installed::Ready(view) = back.installed else { panic!("a downgrade asking for nothing more waits") };
    assert_eq!(view.version, "0.1.0");
    assert_eq!(serde_json::Value::Object(view.config), serde_json::json!({"a": 1, "b": 2}), "config carries over");

    // One asking for more waits; the next upgrade replaces it and says so, leaving no files of it.
    let wider = "[grants]\nsubscribe = [\"machinomy/fridge/state\"]";
    let waiting = h.plugins.upgrade(v("0.4.0", wider, module(2, "")), Overrides::new()).await.unwrap();
    assert!(matches!(waiting.installed, Installed::AwaitingApproval(_)));
    let replacing = h.plugins.upgrade(v("0.2.0", "", counter()), Overrides::new()).await.unwrap();
    assert_eq!(replacing.replaced.as_deref(), Some("0.4.0"));
    let Installed::Ready(view) = replacing.installed else { panic!("not ready") };
    assert_eq!((view.version.as_str(), view.pending_upgrade), ("0.2.0", None));
    let modules: Vec<PathBuf> = std::fs::read_dir(h.dir.path().join("plugins/up"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    assert_eq!(modules.len(), 1, "{modules:?}");
    h.stop().await;
}

/// Keeps its settings as it read them at start under "c", and counts its starts under "s".
fn tunable() -> Vec<u8> {
    module(
        1,
        r#"
  (data (i32.const 100) "c")
  (data (i32.const 101) "s")
  (func (export "on_start")
    (drop (call $kv_set (i32.const 100) (i32.const 1) (i32.const 1024)
      (call $config (i32.const 1024) (i32.const 4096))))
    (i64.store (i32.const 0) (i64.const 0))
    (drop (call $kv_get (i32.const 101) (i32.const 1) (i32.const 0) (i32.const 8)))
    (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.const 1)))
    (drop (call $kv_set (i32.const 101) (i32.const 1) (i32.const 0) (i32.const 8))))
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_changes_settings_in_place_and_the_plugin_restarts_with_its_storage() {
    let mut h = Harness::start().await;
    h.install(package("tunable", "[config]\nlevel = 1\nname = \"den\"", tunable())).await;
    let read = |h: &Harness| {
        let config = h.kv("tunable", "c").and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok());
        let starts = h.kv("tunable", "s").map(|v| u64::from_le_bytes(v[..8].try_into().unwrap()));
        (config, starts)
    };
    let first = serde_json::json!({"level": 1, "name": "den"});
    eventually("the first start", async || (read(&h) == (Some(first.clone()), Some(1))).then_some(())).await;

    let set = |key: &str, value: serde_json::Value| Overrides::from([(key.to_owned(), value)]);
    let view = h.plugins.configure("tunable", set("level", serde_json::json!(5))).await.unwrap();
    let second = serde_json::json!({"level": 5, "name": "den"});
    assert_eq!(serde_json::Value::Object(view.config), second);
    assert_eq!((view.version.as_str(), view.overridden), ("1.0.0", vec!["level".to_owned()]));
    // Restarted with the new settings; its storage (the start count) is kept.
    eventually("the restart", async || (read(&h) == (Some(second.clone()), Some(2))).then_some(())).await;
    let logged = h.show("tunable").await.recent.last().map(|line| (line.level.clone(), line.text.clone()));
    assert_eq!(logged, Some(("hub".to_owned(), "the owner changed level; the plugin restarts to read it".to_owned())));

    // Settings that cannot apply change nothing: a bad name, one the manifest does not declare.
    let error = h.plugins.configure("tunable", set("bad key!", serde_json::json!(1))).await.unwrap_err();
    assert!(error.to_string().contains("bad key!"), "{error}");
    let error = h.plugins.configure("tunable", set("levle", serde_json::json!(1))).await.unwrap_err();
    assert_eq!(error.to_string(), "setting \"levle\": tunable has no such setting (its settings: level, name)");
    let error = h.plugins.configure("tunable", set("level", serde_json::json!("high"))).await.unwrap_err();
    assert_eq!(error.to_string(), "setting \"level\": it is a number (default 1), and \"high\" is not");
    assert!(matches!(h.plugins.configure("nope", Overrides::new()).await, Err(PluginError::Unknown(_))));
    assert_eq!(serde_json::Value::Object(h.show("tunable").await.config), second);

    // The owner's settings outlive the hub; null gives the manifest's value back.
    h.restart().await;
    eventually("the start after the hub's", async || (read(&h) == (Some(second.clone()), Some(3))).then_some(())).await;
    let view = h.plugins.configure("tunable", set("level", serde_json::Value::Null)).await.unwrap();
    assert_eq!(serde_json::Value::Object(view.config), first);
    eventually("the reset", async || (read(&h) == (Some(first.clone()), Some(4))).then_some(())).await;

    // Settings that end as they were restart nothing.
    h.plugins.configure("tunable", Overrides::new()).await.unwrap();
    h.plugins.configure("tunable", set("level", serde_json::json!(1))).await.unwrap();
    assert_eq!(read(&h).1, Some(4));

    // A disabled plugin takes new settings without starting, and starts with them. A number
    // given for a text setting is its text.
    h.plugins.set_enabled("tunable", false).await.unwrap();
    let view = h.plugins.configure("tunable", set("name", serde_json::json!(42))).await.unwrap();
    let third = serde_json::json!({"level": 1, "name": "42"});
    assert_eq!(serde_json::Value::Object(view.config), third);
    assert_eq!(read(&h).1, Some(4));
    h.plugins.set_enabled("tunable", true).await.unwrap();
    assert_eq!(read(&h), (Some(third), Some(5)));

    // The owner's word after an upgrade was asked for stands when it is approved.
    let wider = "[grants]\nsubscribe = [\"machinomy/fridge/state\"]\n[config]\nlevel = 1\nname = \"den\"";
    let waiting = h.plugins.upgrade(package("tunable", wider, tunable()), set("level", serde_json::json!(3)));
    assert!(matches!(waiting.await.unwrap().installed, Installed::AwaitingApproval(_)));
    h.plugins.configure("tunable", set("level", serde_json::json!(5))).await.unwrap();
    let approved = h.plugins.approve("tunable").await.unwrap();
    assert_eq!(approved.config["level"], serde_json::json!(5), "{approved:?}");
    h.stop().await;
}

/// `plugins/check-wasm.py` on a module; (exit code, stdout, stderr).
fn check_wasm(dir: &Path, file: &str, wasm: &[u8]) -> (i32, String, String) {
    let path = dir.join(file);
    std::fs::write(&path, wasm).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/check-wasm.py");
    let out = std::process::Command::new("python3").arg(script).arg(&path).output().expect("python3");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn check_wasm_says_which_abi_version_a_module_returns_and_when_only_the_hub_can_tell() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = check_wasm(dir.path(), "one.wasm", &module(1, ""));
    assert_eq!(code, 0);
    assert!(out.contains("one.wasm: ABI v1 ok (machinomy_abi_version returns 1)"), "{out}");

    let (code, _, err) = check_wasm(dir.path(), "two.wasm", &module_speaking(2, 1, ""));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("machinomy_abi_version returns 2; this ABI is v1"), "{err}");

    // A version computed at run time: the signature is all a reader of the file can check.
    let computed = wat::parse_str(
        r#"(module (memory (export "memory") 1)
           (func (export "machinomy_abi_version") (result i32) (i32.add (i32.const 1) (i32.const 1)))
           (func (export "machinomy_alloc") (param i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    let (code, out, _) = check_wasm(dir.path(), "computed.wasm", &computed);
    assert_eq!(code, 0);
    assert!(out.contains("the hub checks the version machinomy_abi_version returns at install"), "{out}");
    assert!(!out.contains("ABI v1 ok"), "{out}");

    let bare = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
    let (_, _, err) = check_wasm(dir.path(), "bare.wasm", &bare);
    assert!(err.contains("does not export machinomy_abi_version (did the plugin call"), "{err}");
}
