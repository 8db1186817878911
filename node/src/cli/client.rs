//! A small JSON client for the agent API: turns connection failures and
//! `{"message"}` error bodies into one-line errors a user can act on.

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// Escapes one path segment.
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    pub fn new(host: &str) -> anyhow::Result<Client> {
        let host = host.trim_end_matches('/');
        let base = if host.starts_with("http://") || host.starts_with("https://") {
            host.to_string()
        } else {
            format!("http://{host}")
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client { base, http })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the skein agent at {}: is `skein agent` running? (set -H/--host or SKEIN_HOST)",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<skein_protocol::api::ErrorBody>(&text)
            .map(|b| b.message)
            .unwrap_or(text);
        bail!("{message} ({status})")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        resp.json()
            .await
            .context("unreadable answer from the agent")
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        resp.text()
            .await
            .context("unreadable answer from the agent")
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?;
        resp.json()
            .await
            .context("unreadable answer from the agent")
    }

    /// POST that expects no answer body (204).
    pub async fn post_empty<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?;
        Ok(())
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await?;
        Ok(())
    }

    /// GET that answers None on 404.
    pub async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Option<T>> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| anyhow!("request to {} failed: {e}", self.base))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("agent answered {}", resp.status());
        }
        Ok(Some(
            resp.json()
                .await
                .context("unreadable answer from the agent")?,
        ))
    }
}
