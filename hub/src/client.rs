//! The admin API client the CLI uses: finds the running daemon through its data dir.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::datadir;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the hub is not running (no API address in {0}); start it with `machinomy-hub run`")]
    NotRunning(String),
    /// A stale `run/api.addr` (the hub was killed): nothing listens there any more.
    #[error("the hub is not running (nothing answers at {0}); start it with `machinomy-hub run`")]
    NotAnswering(String),
    #[error("no admin token at {0}; restarting the hub creates a new one")]
    NoToken(String),
    #[error("cannot reach the hub at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{0}")]
    Api(String),
    #[error("the hub answered something unexpected: {0}")]
    BadAnswer(String),
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the daemon that owns `data_dir`.
    pub fn for_data_dir(data_dir: &Path) -> Result<Client, ClientError> {
        let addr = datadir::read_api_addr(data_dir)
            .ok_or_else(|| ClientError::NotRunning(data_dir.join(datadir::RUN_DIR).display().to_string()))?;
        let token_path = data_dir.join(datadir::TOKEN_FILE);
        if !token_path.exists() {
            return Err(ClientError::NoToken(token_path.display().to_string()));
        }
        let token = datadir::read_admin_token(data_dir)?;
        Client::new(&format!("http://{addr}"), &token)
    }

    pub fn new(base: &str, token: &str) -> Result<Client, ClientError> {
        // The admin API is local: never hand the admin token to an HTTP proxy from the environment.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Unreachable { url: base.to_owned(), message: error_chain(&e) })?;
        Ok(Client { base: base.trim_end_matches('/').to_owned(), token: token.to_owned(), http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(self.http.get(self.url(path))).await
    }

    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let response = self.send(self.http.get(self.url(path))).await?;
        response.text().await.map_err(|e| ClientError::BadAnswer(e.to_string()))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.json(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.json(self.http.put(self.url(path)).json(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.json(self.http.patch(self.url(path)).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(self.http.delete(self.url(path))).await
    }

    /// A DELETE whose answer has no body (204).
    pub async fn delete_empty(&self, path: &str) -> Result<(), ClientError> {
        self.send(self.http.delete(self.url(path))).await.map(drop)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = request.bearer_auth(&self.token).send().await.map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<machinomy_web::model::ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        Err(ClientError::Api(message))
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        if error.is_connect() {
            let addr = self.base.strip_prefix("http://").unwrap_or(&self.base);
            return ClientError::NotAnswering(addr.to_owned());
        }
        ClientError::Unreachable { url: self.base.clone(), message: error_chain(error) }
    }

    async fn json<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        response.json().await.map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}

/// An error with its causes, `a: b: c`, so "connection refused" is not lost behind
/// "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
