//! What sopr adds on top of the model in LLM mode.
//!
//! Starts the local OpenAI-compatible test server in this process (fixed
//! 20 ms answers), runs `sopr serve` as a child process against it on a
//! throw-away SQLite database, and sends card-delivery messages (an SOP with
//! an LLM block) through `POST /v1/messages`:
//!
//! 1. closed loop, 32 concurrent clients;
//! 2. open loop, a fixed 200 requests per second;
//! 3. 1,000 requests held in flight by a 3 s model, to measure the server's
//!    resident memory per in-flight request.
//!
//! For each answered request it prints percentiles of: the client's latency;
//! the model server's own time (from its receiving the call to answering);
//! `e2e overhead` = client latency − model time (HTTP, routing, prompt,
//! validation, database writes); and `llm overhead` = the pipeline's LLM step
//! (`timings.llm_us` on the decision) − model time: what the LLM layer itself
//! adds, without the database. Run with `cargo bench --bench llm_overhead`.

#[path = "../tests/support/llm_server.rs"]
mod llm_server;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_server::{Behaviour, LlmServer};
use serde_json::{Value, json};

const MODEL_DELAY: Duration = Duration::from_millis(20);
const TEXTS: [&str; 4] = [
    "My new card still hasn't arrived, how long does delivery take?",
    "When will my card be delivered?",
    "How long does it take for a new card to arrive?",
    "I ordered a card last week and it is still not here",
];

struct Sample {
    name: String,
    latency: Duration,
    decision: String,
}

struct Sopr {
    child: Child,
    base: String,
    key: String,
    db_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sopr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn start_sopr(model: &LlmServer) -> Sopr {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let config = dir.path().join("sopr.toml");
    let mut file = std::fs::File::create(&config).expect("config file");
    write!(
        file,
        r#"
[database]
url = "{db_url}"
[sops]
dir = "{sops}"
[bootstrap]
demo_tenant = ""
[log]
level = "warn"
[[llm.providers]]
name = "bench"
base_url = "{base}"
model = "bench-model"
max_concurrency = 4096
timeout_ms = 10000
"#,
        sops = concat!(env!("CARGO_MANIFEST_DIR"), "/sops"),
        base = model.base_url,
    )
    .expect("write config");
    let sopr = env!("CARGO_BIN_EXE_sopr");
    let run = |args: &[&str]| {
        let out = Command::new(sopr)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run sopr");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(&["migrate"]);
    let key = run(&["keys", "create", "--tenant", "bench"]);
    let port = free_port();
    let child = Command::new(sopr)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sopr serve");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "sopr did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Sopr {
        child,
        base,
        key,
        db_url,
        _dir: dir,
    }
}

async fn send(client: &reqwest::Client, sopr: &Sopr, n: usize) -> Option<Sample> {
    let name = format!("Bench {n}");
    let body = json!({
        "customer": { "id": format!("bench-{n}"), "name": name },
        "text": TEXTS[n % TEXTS.len()],
    });
    let started = Instant::now();
    let response = client
        .post(format!("{}/v1/messages", sopr.base))
        .bearer_auth(&sopr.key)
        .json(&body)
        .send()
        .await
        .ok()?;
    let value: Value = response.json().await.ok()?;
    let latency = started.elapsed();
    (value["outcome"] == "answered").then(|| Sample {
        name,
        latency,
        decision: value["decision_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn line(label: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    println!(
        "  {label:<16} p50 {:>8.3} ms   p90 {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
        percentile(&values, 0.50),
        percentile(&values, 0.90),
        percentile(&values, 0.99),
        percentile(&values, 1.0),
    );
}

/// Prints the latency breakdown of `samples`, matching each to the model
/// server's record of its call (by customer name in the prompt) and to the
/// decision's stored timings.
async fn report(title: &str, samples: &[Sample], model: &LlmServer, sopr: &Sopr, wall: Duration) {
    let store = sopr::store::connect(&sopr.db_url, 2)
        .await
        .expect("open bench database");
    let (tenant, _) = store.ensure_tenant("bench").await.expect("tenant");
    let mut model_ms: HashMap<String, f64> = HashMap::new();
    for seen in model.seen() {
        let prompt = seen.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default();
        if let (Some(at), Some(name)) = (
            seen.answered_at,
            prompt
                .split("Customer name: ")
                .nth(1)
                .and_then(|r| r.split('.').next()),
        ) {
            model_ms.insert(name.to_string(), (at - seen.received).as_secs_f64() * 1e3);
        }
    }
    let (mut client, mut model_time, mut e2e, mut llm) = (vec![], vec![], vec![], vec![]);
    for s in samples {
        let Some(&m) = model_ms.get(&s.name) else {
            continue;
        };
        let id = s.decision.parse().expect("decision id");
        let Some(decision) = store.decision(tenant.id, id).await.expect("decision") else {
            continue;
        };
        let llm_us = decision.timings.0["llm_us"].as_f64().unwrap_or_default();
        let latency = s.latency.as_secs_f64() * 1e3;
        client.push(latency);
        model_time.push(m);
        e2e.push(latency - m);
        llm.push(llm_us / 1e3 - m);
    }
    println!(
        "{title}: {} answered through the LLM in {:.1} s ({:.0} per second)",
        client.len(),
        wall.as_secs_f64(),
        client.len() as f64 / wall.as_secs_f64()
    );
    line("client latency", client);
    line("model time", model_time);
    line("e2e overhead", e2e);
    line("llm overhead", llm);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    sopr::llm::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let model = LlmServer::start("bench").await;
        model.set_default(Behaviour::slow(MODEL_DELAY));
        let sopr = Arc::new(start_sopr(&model).await);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(2048)
            .build()
            .expect("client");
        println!("sopr LLM-mode overhead; model answers after {MODEL_DELAY:?}; SQLite");

        for n in 0..200 {
            send(&client, &sopr, 1_000_000 + n).await;
        }

        // 1. Closed loop, 32 clients.
        let total = 4_000;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..32)
            .map(|_| {
                let (client, sopr, next) = (client.clone(), sopr.clone(), next.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= total {
                            return out;
                        }
                        out.extend(send(&client, &sopr, n).await);
                    }
                })
            })
            .collect();
        let mut samples = Vec::new();
        for w in workers {
            samples.extend(w.await.expect("worker"));
        }
        report("concurrency 32", &samples, &model, &sopr, started.elapsed()).await;

        // 2. Open loop, 200 requests per second for 15 s.
        let rate = 200;
        let count = rate * 15;
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        for i in 0..count {
            tick.tick().await;
            let (client, sopr) = (client.clone(), sopr.clone());
            tasks.push(tokio::spawn(async move {
                send(&client, &sopr, 100_000 + i).await
            }));
        }
        let mut samples = Vec::new();
        for t in tasks {
            samples.extend(t.await.expect("request"));
        }
        report("fixed 200/s", &samples, &model, &sopr, started.elapsed()).await;

        // 3. Memory per in-flight request.
        let pid = sopr.child.id();
        model.set_default(Behaviour::slow(Duration::from_secs(3)));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(pid);
        let in_flight = 1_000;
        let tasks: Vec<_> = (0..in_flight)
            .map(|i| {
                let (client, sopr) = (client.clone(), sopr.clone());
                tokio::spawn(async move { send(&client, &sopr, 200_000 + i).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        let during = rss_kib(pid);
        let answered = futures::future::join_all(tasks)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Some(_))))
            .count();
        println!(
            "memory: RSS {before} KiB idle, {during} KiB with {in_flight} requests in flight \
             ({:.1} KiB per request); {answered} answered",
            (during.saturating_sub(before)) as f64 / in_flight as f64
        );
    });
}
