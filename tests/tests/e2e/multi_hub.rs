//! Several hubs on one machine at once.

use machinomy_tests::TestHub;
use machinomy_web::model::HubStatus;

#[tokio::test]
async fn two_hubs_on_separate_data_dirs_run_side_by_side() {
    let mut a = TestHub::builder().name("hub-a").build().unwrap();
    let mut b = TestHub::builder().name("hub-b").build().unwrap();
    let (started_a, started_b) = tokio::join!(a.start(), b.start());
    started_a.unwrap();
    started_b.unwrap();
    assert_ne!(a.addr().unwrap(), b.addr().unwrap());

    let status_a: HubStatus = a.api().unwrap().get_json("/api/v1/status").await.unwrap();
    let status_b: HubStatus = b.api().unwrap().get_json("/api/v1/status").await.unwrap();
    assert_eq!((status_a.name.as_str(), status_b.name.as_str()), ("hub-a", "hub-b"));
    assert_ne!(status_a.public_key, status_b.public_key);

    // Each CLI talks to its own hub, and each token opens only its own hub.
    let cli_a: HubStatus = a.cli(&["status", "--json"]).await.unwrap().json().unwrap();
    let cli_b: HubStatus = b.cli(&["status", "--json"]).await.unwrap().json().unwrap();
    assert_eq!(cli_a.public_key, status_a.public_key);
    assert_eq!(cli_b.public_key, status_b.public_key);
    let cross = a.api().unwrap().anonymous(reqwest::Method::GET, "/api/v1/status").bearer_auth(b.token().unwrap());
    assert_eq!(cross.send().await.unwrap().status(), reqwest::StatusCode::UNAUTHORIZED);

    let (stopped_a, stopped_b) = tokio::join!(a.stop(), b.stop());
    assert!(stopped_a.unwrap().success());
    assert!(stopped_b.unwrap().success());
}
