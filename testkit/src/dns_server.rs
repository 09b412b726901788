//! A DNS server for tests (the DNS protocol from `hickory-proto`), bound to a loopback
//! address over UDP: it answers A queries for the names it is given, with the addresses
//! and TTL set now (changeable while it runs), and NXDOMAIN for every other name.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

type Answers = Arc<Mutex<HashMap<String, (Vec<Ipv4Addr>, u32)>>>;
type Asked = Arc<Mutex<HashMap<String, usize>>>;

/// A running test DNS server; stops when dropped.
pub struct DnsServer {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    answers: Answers,
    queries: Arc<Mutex<usize>>,
    asked: Asked,
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start() -> std::io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let answers: Answers = Arc::default();
        let queries = Arc::new(Mutex::new(0));
        let asked: Asked = Arc::default();
        let (a, q, k) = (answers.clone(), queries.clone(), asked.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                *q.lock().unwrap() += 1;
                if let Some(reply) = answer(&buf[..n], &a, &k) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        Ok(Self {
            addr,
            answers,
            queries,
            asked,
            task,
        })
    }

    /// Answers A queries for `name` with `ips` and `ttl` seconds from now on; no
    /// addresses means NXDOMAIN.
    pub fn set(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        let mut answers = self.answers.lock().unwrap();
        if ips.is_empty() {
            answers.remove(&key);
        } else {
            answers.insert(key, (ips.to_vec(), ttl));
        }
    }

    /// How many queries arrived.
    pub fn queries(&self) -> usize {
        *self.queries.lock().unwrap()
    }

    /// How many A queries asked for `name`.
    pub fn queries_for(&self, name: &str) -> usize {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        self.asked.lock().unwrap().get(&key).copied().unwrap_or(0)
    }
}

/// The reply to one query message; `None` for what is not a query.
fn answer(packet: &[u8], answers: &Answers, asked: &Asked) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    let mut found = false;
    for q in &query.queries {
        reply.add_query(q.clone());
        let name = q.name().to_ascii();
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        if q.query_type() == RecordType::A {
            *asked.lock().unwrap().entry(key.clone()).or_default() += 1;
        }
        let Some((ips, ttl)) = answers.lock().unwrap().get(&key).cloned() else {
            continue;
        };
        found = true;
        if q.query_type() == RecordType::A {
            for ip in ips {
                reply.add_answer(Record::from_rdata(q.name().clone(), ttl, RData::A(A(ip))));
            }
        }
    }
    if !found {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply.to_vec().ok()
}
