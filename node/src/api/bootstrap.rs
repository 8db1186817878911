//! The API before the full one: while the agent starts and, with
//! `--bootstrap-expect`, while the box looks for the boxes it forms (or
//! joins) its cluster with. `GET /v1/members` answers the gossip membership
//! exactly as later, `GET /v1/info` what the node knows of itself, and every
//! other path a 503 `{"message": ...}` that says why (the text the agent
//! logs as `bootstrap: ...`), so `skein node ls` prints something useful
//! instead of hanging.
//!
//! [`Switch`] serves one listener from the start; the agent replaces its
//! router (starting, then forming, then the full [`super::router`]) while it
//! serves: no gap, no rebinding. A request is answered by the router current
//! when it arrived.

use super::ApiError;
use crate::membership::{MembershipHandle, Snapshot};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use skein_protocol::api::Info;
use std::convert::Infallible;
use tokio::sync::watch;

/// The router one listener serves, replaceable while it serves.
pub struct Switch {
    current: watch::Sender<Router>,
}

impl Switch {
    /// A switch serving `first`, and the app to hand to `axum::serve`.
    pub fn new(first: Router) -> (Switch, Router) {
        let (current, rx) = watch::channel(first);
        let app = Router::new().fallback(move |req: Request| {
            let router = rx.borrow().clone();
            dispatch(router, req)
        });
        (Switch { current }, app)
    }

    /// Serves `next` from now on (requests already running finish on the
    /// router they started with).
    pub fn serve(&self, next: Router) {
        let _previous = self.current.send_replace(next);
    }
}

/// Runs `req` through `svc` (a `Router`: always ready, never fails).
async fn dispatch<S>(mut svc: S, req: Request) -> Response
where
    S: axum::ServiceExt<Request, Response = Response, Error = Infallible>,
{
    match svc.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// What the node can say about itself before its cluster is formed.
#[derive(Clone)]
pub struct Forming {
    pub node_id: String,
    pub node_name: String,
    pub default_runtime: String,
    pub membership: MembershipHandle,
    /// Why the full API is not there yet (one sentence, no trailing period).
    pub status: watch::Receiver<String>,
}

/// Before membership runs: every path answers 503 with `status`.
pub fn starting(status: watch::Receiver<String>) -> Router {
    Router::new().fallback(move || {
        let message = status.borrow().clone();
        async move { unavailable(message) }
    })
}

/// While the box forms or joins its cluster.
pub fn forming(state: Forming) -> Router {
    Router::new()
        .route("/v1/members", get(members))
        .route("/v1/info", get(info))
        .fallback(|State(st): State<Forming>| async move {
            let status = st.status.borrow().clone();
            unavailable(format!(
                "{status}; until then only GET /v1/members and GET /v1/info answer"
            ))
        })
        .with_state(state)
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}

/// The same view (and JSON) as the full API's `GET /v1/members`.
async fn members(State(st): State<Forming>) -> Json<Snapshot> {
    Json(st.membership.snapshot().as_ref().clone())
}

/// No cluster yet: no cluster id, no leader, nothing replicated.
async fn info(State(st): State<Forming>) -> Json<Info> {
    Json(Info::local(
        &st.node_id,
        &st.node_name,
        "",
        &st.default_runtime,
        "",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn call(app: &Router, path: &str) -> (StatusCode, String) {
        let req = match Request::builder().uri(path).body(Body::empty()) {
            Ok(r) => r,
            Err(e) => panic!("request for {path}: {e}"),
        };
        let resp = dispatch(app.clone(), req).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn the_switch_answers_with_the_current_router() {
        let (tx, rx) = watch::channel("the agent is starting".to_string());
        let (switch, app) = Switch::new(starting(rx));
        let (status, body) = call(&app, "/v1/nodes").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("the agent is starting"), "{body}");

        tx.send_replace("still forming: 1 of 3 seen".into());
        let (_, body) = call(&app, "/v1/services").await;
        assert!(body.contains("still forming: 1 of 3 seen"), "{body}");

        switch.serve(Router::new().route("/v1/nodes", get(|| async { "[]" })));
        let (status, body) = call(&app, "/v1/nodes").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
    }
}
