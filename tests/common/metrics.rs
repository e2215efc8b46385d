//! Reading the Prometheus text format (also included by `benches/replication.rs`).

/// The sum of every series of metric `name` (`name value` or `name{labels} value`), or `None`
/// when the text has no such series.
pub fn sum_of(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
