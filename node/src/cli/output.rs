//! Printing: aligned tables for people, JSON for scripts (`--format json`
//! prints exactly the API's row objects).

use clap::ValueEnum;
use serde::Serialize;
use skein_protocol::api::{NodeRow, ServiceRow, StackRow, TaskRow};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(&c);
            } else {
                let pad = widths[i] + 3 - c.chars().count();
                s.push_str(&c);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

fn json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

pub fn ago(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    let now = crate::util::now_ms();
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=1 => "just now".into(),
        2..=59 => format!("{s} seconds ago"),
        60..=119 => "about a minute ago".into(),
        120..=3599 => format!("{} minutes ago", s / 60),
        3600..=7199 => "about an hour ago".into(),
        7200..=172_799 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

pub fn print_nodes(rows: &[NodeRow], f: Format) -> anyhow::Result<()> {
    if f == Format::Json {
        return json(&rows);
    }
    let body = rows
        .iter()
        .map(|r| {
            vec![
                format!("{}{}", short(&r.id), if r.leader { " *" } else { "" }),
                r.name.clone(),
                r.status.clone(),
                r.availability.clone(),
                r.role.clone(),
                if r.leader {
                    "leader".into()
                } else {
                    r.reachability.clone()
                },
                r.addr.clone(),
                r.region.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "STATUS",
                "AVAILABILITY",
                "ROLE",
                "MANAGER STATUS",
                "ADDR",
                "REGION"
            ],
            body
        )
    );
    Ok(())
}

pub fn print_services(rows: &[ServiceRow], f: Format) -> anyhow::Result<()> {
    if f == Format::Json {
        return json(&rows);
    }
    let body = rows
        .iter()
        .map(|r| {
            vec![
                short(&r.id),
                r.name.clone(),
                r.mode.clone(),
                format!("{}/{}", r.running, r.replicas),
                r.image.clone(),
                r.ports.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], body)
    );
    Ok(())
}

pub fn print_tasks(rows: &[TaskRow], f: Format) -> anyhow::Result<()> {
    if f == Format::Json {
        return json(&rows);
    }
    let mut last_name = String::new();
    let body = rows
        .iter()
        .map(|r| {
            // History rows (same name as the row above) are indented, as docker does.
            let name = if r.name == last_name {
                format!(" \\_ {}", r.name)
            } else {
                r.name.clone()
            };
            last_name = r.name.clone();
            vec![
                short(&r.id),
                name,
                r.image.clone(),
                r.node.clone(),
                r.desired_state.clone(),
                format!("{} {}", r.state, ago(r.since)).trim().to_string(),
                r.error.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "IMAGE",
                "NODE",
                "DESIRED STATE",
                "CURRENT STATE",
                "ERROR"
            ],
            body
        )
    );
    Ok(())
}

pub fn print_stacks(rows: &[StackRow], f: Format) -> anyhow::Result<()> {
    if f == Format::Json {
        return json(&rows);
    }
    let body = rows
        .iter()
        .map(|r| vec![r.name.clone(), r.services.to_string()])
        .collect();
    print!("{}", table(&["NAME", "SERVICES"], body));
    Ok(())
}

/// One object for one argument, an array for several.
pub fn print_inspect(mut items: Vec<serde_json::Value>) -> anyhow::Result<()> {
    if items.len() == 1 {
        json(&items.remove(0))
    } else {
        json(&items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "NAME"],
            vec![
                vec!["a".into(), "web".into()],
                vec!["bbbb".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID     NAME\na      web\nbbbb   x\n");
    }
}
