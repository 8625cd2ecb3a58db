//! What the hub remembers across a restart.

use machinomy_core::{Amount, Approval, ApprovalState, Period, SpendOutcome};
use std::time::Duration;

use machinomy_tests::{TestHub, now, spend_request, wait_for};
use machinomy_web::model::BudgetView;

/// 1 USD in base units (9 decimals).
const USD: u128 = 1_000_000_000;

#[tokio::test]
async fn budgets_and_owner_decisions_survive_a_restart() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let set = hub
        .cli(&["budget", "set", "device:fridge", "--period", "week", "--limit", "10", "--auto-approve", "0.5"])
        .await
        .unwrap();
    assert!(set.ok().unwrap().contains("device:fridge"), "{set}");
    assert!(hub.stop().await.unwrap().success());

    // Three requests over the auto-approve threshold, as the fridge would make them.
    let ids = hub
        .with_books(async |books| {
            let mut ids = Vec::new();
            for (amount, memo) in [(2 * USD, "milk"), (3 * USD, "butter"), (USD + 1, "eggs")] {
                let request = spend_request("device:fridge", "grocer", Amount::from_base_units(amount), memo)?;
                let approval = books.payments().request_spend(request, now()).await?;
                assert!(approval.is_pending(), "{approval:?}");
                ids.push(approval.id);
            }
            Ok(ids)
        })
        .await
        .unwrap();
    let [milk, butter, eggs] = ids[..] else { unreachable!() };

    hub.start().await.unwrap();
    let pending: Vec<Approval> = hub.cli(&["approvals", "list", "--json"]).await.unwrap().json().unwrap();
    let mut pending_ids: Vec<u64> = pending.iter().map(|a| a.id).collect();
    pending_ids.sort_unstable();
    assert_eq!(pending_ids, ids);

    let before = now();
    let approved = hub.cli(&["approvals", "approve", &milk.to_string()]).await.unwrap();
    assert!(approved.ok().unwrap().contains("approved by admin-token"), "{approved}");
    let denied = hub.cli(&["approvals", "deny", &butter.to_string(), "--reason", "too dear"]).await.unwrap();
    assert!(denied.ok().unwrap().contains("denied by admin-token"), "{denied}");
    let after = now();

    assert!(hub.stop().await.unwrap().success());
    hub.start().await.unwrap();

    let all: Vec<Approval> = hub.cli(&["approvals", "list", "--all", "--json"]).await.unwrap().json().unwrap();
    let find = |id: u64| all.iter().find(|a| a.id == id).unwrap_or_else(|| panic!("approval {id} is gone: {all:?}"));
    assert_eq!(all.len(), 3, "{all:?}");
    match &find(milk).state {
        ApprovalState::Approved { by, at } => {
            assert_eq!(by, "admin-token");
            assert!(before <= *at && *at <= after, "approved at {at:?}, not between {before:?} and {after:?}");
        }
        other => panic!("milk: {other:?}"),
    }
    // Nothing paid it before the stop (no device asked for it over MQTT), and nothing will now.
    assert!(
        matches!(&find(milk).outcome, Some(SpendOutcome::Failed { reason, .. }) if reason == "the hub stopped before paying it"),
        "{:?}",
        find(milk)
    );
    match &find(butter).state {
        ApprovalState::Denied { by, at, reason } => {
            assert_eq!(by, "admin-token");
            assert_eq!(reason, "too dear");
            assert!(before <= *at && *at <= after, "denied at {at:?}, not between {before:?} and {after:?}");
        }
        other => panic!("butter: {other:?}"),
    }
    assert_eq!(find(eggs).state, ApprovalState::Pending);
    assert_eq!(find(eggs).request.memo, "eggs");
    assert_eq!(find(eggs).request.amount, Amount::from_base_units(USD + 1));

    let pending: Vec<Approval> = hub.cli(&["approvals", "list", "--json"]).await.unwrap().json().unwrap();
    assert_eq!(pending.iter().map(|a| a.id).collect::<Vec<_>>(), vec![eggs]);

    // A decided request stays decided.
    let again = hub.cli(&["approvals", "deny", &milk.to_string()]).await.unwrap();
    assert!(again.error_line().unwrap().contains("already decided"), "{again}");

    let budgets: Vec<BudgetView> = hub.cli(&["budget", "list", "--json"]).await.unwrap().json().unwrap();
    assert_eq!(budgets.len(), 1, "{budgets:?}");
    let budget = &budgets[0];
    assert_eq!(budget.budget.subject.to_string(), "device:fridge");
    assert_eq!(budget.budget.period, Period::Week);
    assert_eq!(budget.budget.limit, Amount::from_base_units(10 * USD));
    assert_eq!(budget.budget.auto_approve, Amount::from_base_units(USD / 2));
    assert_eq!(budget.spent_this_period, Amount::ZERO, "an approval left unpaid at the stop holds no budget");
    assert!(hub.stop().await.unwrap().success());
}

#[tokio::test]
async fn a_killed_hub_keeps_what_it_acknowledged() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let set = hub
        .cli(&["budget", "set", "plugin:weather", "--period", "day", "--limit", "0.25", "--auto-approve", "0.01"])
        .await
        .unwrap();
    set.ok().unwrap();
    // No chance to flush: what the API answered must already be on disk.
    hub.kill().await.unwrap();
    assert!(hub.api_addr_file().exists(), "a killed hub cannot clean up");

    hub.start().await.unwrap();
    let budgets: Vec<BudgetView> = hub.cli(&["budget", "list", "--json"]).await.unwrap().json().unwrap();
    assert_eq!(budgets.len(), 1, "{budgets:?}");
    assert_eq!(budgets[0].budget.limit, Amount::from_base_units(USD / 4));
    assert!(hub.stop().await.unwrap().success());
}

#[tokio::test]
async fn a_pending_request_the_owner_ignores_expires_and_stays_expired() {
    let mut hub = TestHub::builder()
        .hub_line("approval_ttl_secs = 1")
        .extra("[[budget]]\nsubject = \"device:door\"\nperiod = \"day\"\nlimit = \"10\"\nauto_approve = \"0\"")
        .build()
        .unwrap();
    let id = hub
        .with_books(async |books| {
            let request = spend_request("device:door", "locksmith", Amount::from_base_units(USD), "new key")?;
            let approval = books.payments().request_spend(request, now()).await?;
            assert!(approval.is_pending(), "{approval:?}");
            Ok(approval.id)
        })
        .await
        .unwrap();

    hub.start().await.unwrap();
    let expired = wait_for("the request to expire", Duration::from_secs(10), || async {
        let all: Vec<Approval> = hub.cli(&["approvals", "list", "--all", "--json"]).await?.json()?;
        Ok(all.into_iter().find(|a| a.id == id && matches!(a.state, ApprovalState::Expired { .. })))
    })
    .await
    .unwrap();
    let ApprovalState::Expired { at } = expired.state else { unreachable!() };
    assert!(at >= expired.expires_at, "expired at {at:?}, before its time {:?}", expired.expires_at);
    let late = hub.cli(&["approvals", "approve", &id.to_string()]).await.unwrap();
    assert!(late.error_line().unwrap().contains("expired"), "{late}");

    assert!(hub.stop().await.unwrap().success());
    hub.start().await.unwrap();
    let again: Approval = hub.cli(&["approvals", "show", &id.to_string(), "--json"]).await.unwrap().json().unwrap();
    assert_eq!(again.state, ApprovalState::Expired { at });
    let pending: Vec<Approval> = hub.cli(&["approvals", "list", "--json"]).await.unwrap().json().unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    assert!(hub.stop().await.unwrap().success());
}

#[tokio::test]
async fn a_budget_in_the_config_file_cannot_be_changed_through_the_api() {
    let mut hub = TestHub::builder()
        .extra("[[budget]]\nsubject = \"device:tv\"\nperiod = \"month\"\nlimit = \"1\"\nauto_approve = \"0.1\"")
        .build()
        .unwrap();
    hub.start().await.unwrap();
    let limit_of = async |hub: &TestHub| -> anyhow::Result<Amount> {
        let budgets: Vec<BudgetView> = hub.cli(&["budget", "list", "--json"]).await?.json()?;
        anyhow::ensure!(budgets.len() == 1, "{budgets:?}");
        Ok(budgets[0].budget.limit)
    };
    assert_eq!(limit_of(&hub).await.unwrap(), Amount::from_base_units(USD));
    // The file wins at every start, so a change through the API would silently revert: refuse it.
    let out = hub
        .cli(&["budget", "set", "device:tv", "--period", "month", "--limit", "5", "--auto-approve", "1"])
        .await
        .unwrap();
    let line = out.error_line().unwrap();
    assert!(line.contains("config file"), "{line}");
    assert_eq!(limit_of(&hub).await.unwrap(), Amount::from_base_units(USD));
    assert!(hub.stop().await.unwrap().success());
}
