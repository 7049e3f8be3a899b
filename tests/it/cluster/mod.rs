//! Three real nodes on 127.0.0.1:0, peers of each other, over one real S3
//! server: read-your-write behind round-robin, one store read per chunk for a
//! blob read through every node at once, DELETE everywhere, nodes that stop,
//! come back, die, or disagree about who is a member, and S3 events.

mod deletes;
mod members;
mod reads;

use blobcache::key::BlobKey;

use crate::common::TestApp;

/// Every node's answer to a GET of `key`: (status, body, X-Cache).
pub(super) async fn get_everywhere(nodes: &[TestApp], key: &BlobKey) -> Vec<(u16, Vec<u8>, String)> {
    let mut out = Vec::new();
    for node in nodes {
        let resp = node.get(key).await;
        let status = resp.status().as_u16();
        let cache = resp
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        out.push((status, resp.bytes().await.unwrap().to_vec(), cache));
    }
    out
}
