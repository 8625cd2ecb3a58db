//! End-to-end tests: real `machinomy-hub` processes, each in its own temp dir on loopback port 0.
//! One test binary; one module per topic; helpers in `machinomy_tests` (tests/src/lib.rs).

mod api;
mod bad_input;
mod bridge;
mod bridge_mosquitto;
mod channels;
mod cli;
mod first_run;
mod mosquitto;
mod multi_hub;
mod peers;
mod persistence;
mod plugins;
mod web_browser;
mod web_ui;
