//! `cortex bench`: many concurrent calls of one tool, then throughput,
//! latency percentiles and errors by type.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cortex_client::{McpClient, McpError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::cli::BenchArgs;
use crate::connect::ClientFlags;
use crate::exit::{Code, Failure, code_for};
use crate::output::{self, line};

/// What the calls of one worker found.
#[derive(Default)]
struct Tally {
    /// Latencies of successful calls.
    ok: Vec<Duration>,
    /// Failed calls by error kind, with the code and message of the first.
    errors: BTreeMap<&'static str, (u64, Code, String)>,
}

pub(crate) async fn run(args: BenchArgs, flags: &ClientFlags, json: bool) -> Result<(), Failure> {
    let mut words = crate::words::Words::new("bench", args.words, flags.url_service());
    let service = words.service()?;
    let tool = words.required("TOOL")?;
    let arg_words = crate::input::ArgWords::parse(&words.rest())?;
    let concurrency = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    // Enough connections for every worker: measure the service, not a
    // pool queue.
    let target = flags
        .connect(|mut config| {
            config.max_connections = config.max_connections.max(concurrency);
            config
        })
        .await?;
    let arguments = crate::client_cmds::arguments_for(&target, &service, &tool, arg_words).await?;
    let client = Arc::new(target.client);

    let bar = if json || !std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(args.calls), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(args.calls)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} calls  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let calls = args.calls;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.min(args.calls))
        .map(|_| {
            let (client, next, bar) = (client.clone(), next.clone(), bar.clone());
            let (service, tool, arguments) = (service.clone(), tool.clone(), arguments.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    let call = Instant::now();
                    match client.call_tool(&service, &tool, arguments.clone()).await {
                        Ok(_) => tally.ok.push(call.elapsed()),
                        Err(error) => record(&mut tally, &error),
                    }
                    bar.inc(1);
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        let part = worker
            .await
            .map_err(|e| Failure::other(format!("a bench worker failed: {e}")))?;
        tally.ok.extend(part.ok);
        for (kind, (count, code, message)) in part.errors {
            let entry = tally.errors.entry(kind).or_insert((0, code, message));
            entry.0 += count;
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    tally.ok.sort_unstable();
    let failed: u64 = tally.errors.values().map(|(count, _, _)| count).sum();
    let rate = args.calls as f64 / elapsed.as_secs_f64().max(1e-9);
    let quantile = |q: f64| -> Option<Duration> {
        let n = tally.ok.len();
        // Nearest rank.
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
        tally.ok.get(rank - 1).copied()
    };
    let points = [
        ("p50", quantile(0.50)),
        ("p90", quantile(0.90)),
        ("p99", quantile(0.99)),
        ("max", tally.ok.last().copied()),
    ];
    if json {
        let mut latency = serde_json::Map::new();
        for (name, value) in points {
            latency.insert(format!("{name}_ms"), json!(value.map(output::millis)));
        }
        let errors: serde_json::Map<String, Value> = tally
            .errors
            .iter()
            .map(|(kind, (count, _, _))| (kind.to_string(), json!(count)))
            .collect();
        output::json(
            &json!({
                "service": service,
                "tool": tool,
                "calls": args.calls,
                "concurrency": args.concurrency,
                "ok": tally.ok.len(),
                "failed": failed,
                "elapsed_s": elapsed.as_secs_f64(),
                "calls_per_s": (rate * 10.0).round() / 10.0,
                "latency": latency,
                "errors": errors,
            }),
            true,
        )?;
    } else {
        line(format!(
            "{} calls of {}.{} in {} with concurrency {}: {:.0} calls/s",
            args.calls,
            service,
            tool,
            output::duration(elapsed),
            args.concurrency,
            rate
        ))?;
        let latency: Vec<String> = points
            .iter()
            .map(|(name, value)| {
                format!(
                    "{name} {}",
                    value.map(output::duration).unwrap_or_else(|| "-".into())
                )
            })
            .collect();
        line(format!(
            "latency (successful calls): {}",
            latency.join("  ")
        ))?;
        if tally.errors.is_empty() {
            line("errors: none")?;
        } else {
            let errors: Vec<String> = tally
                .errors
                .iter()
                .map(|(kind, (count, _, _))| format!("{kind} {count}"))
                .collect();
            line(format!("errors: {failed} ({})", errors.join(", ")))?;
        }
    }
    // Exit with the code of the most frequent error, naming an example.
    match tally.errors.iter().max_by_key(|(_, (count, _, _))| *count) {
        None => Ok(()),
        Some((_, (count, code, message))) => Err(Failure::new(
            *code,
            format!(
                "{failed} of {} calls failed; most often ({count}×): {message}",
                args.calls
            ),
        )),
    }
}

fn record(tally: &mut Tally, error: &McpError) {
    let entry = tally
        .errors
        .entry(error.kind())
        .or_insert_with(|| (0, code_for(error), error.to_string()));
    entry.0 += 1;
}
