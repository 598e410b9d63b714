//! Prometheus text pages (prometheus-parse): the figures tests and benchmarks read from
//! `/metrics`.

use prometheus_parse::{Scrape, Value};

/// One scrape of a `/metrics` page.
#[derive(Debug)]
pub struct Metrics(Scrape);

impl Metrics {
    /// Parses a page; lines that are not samples or comments are an error.
    pub fn parse(text: &str) -> std::io::Result<Metrics> {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).map(Metrics)
    }

    /// The value of the first sample named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .find_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    /// The cumulative buckets `(upper bound, count)` of histogram `name`, `+Inf` last.
    /// Works whether or not the page declares the histogram's type.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut v: Vec<(f64, f64)> = Vec::new();
        for s in &self.0.samples {
            match &s.value {
                Value::Histogram(h) if s.metric == name => {
                    v.extend(h.iter().map(|b| (b.less_than, b.count)));
                }
                Value::Counter(c) | Value::Gauge(c) | Value::Untyped(c) if s.metric == bucket => {
                    let le = s.labels.get("le").and_then(|le| match le {
                        "+Inf" => Some(f64::INFINITY),
                        le => le.parse().ok(),
                    });
                    if let Some(le) = le {
                        v.push((le, *c));
                    }
                }
                _ => {}
            }
        }
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// Quantile `q` of the observations between two scrapes of a cumulative histogram (buckets as
/// [`Metrics::buckets`] returns them), linearly interpolated within its bucket; `None` when
/// nothing was observed between them.
pub fn quantile_between(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(b, c)| {
            let c0 = before.iter().find(|(b0, _)| b0 == b).map_or(0.0, |x| x.1);
            (*b, c - c0)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (b, c) in delta {
        if c >= target {
            if b.is_infinite() {
                return Some(lo);
            }
            let inside = c - below;
            let frac = if inside > 0.0 {
                (target - below) / inside
            } else {
                1.0
            };
            return Some(lo + (b - lo) * frac);
        }
        (lo, below) = (b, c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP edge_up 1 when up\n# TYPE edge_up gauge\nedge_up 1\n\
        bridge_checkpoint{topic=\"telemetry\",partition=\"0\"} 12\n\
        bridge_checkpoint{topic=\"telemetry\",partition=\"1\"} 30\n\
        lat_bucket{le=\"1\"} 2\nlat_bucket{le=\"2\"} 6\nlat_bucket{le=\"+Inf\"} 8\n\
        # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 4\nh_sum 3\nh_count 4\n";

    #[test]
    fn values_buckets_quantiles() {
        let m = Metrics::parse(PAGE).unwrap();
        assert_eq!(m.value("edge_up", &[]), Some(1.0));
        assert_eq!(m.value("bridge_checkpoint", &[]), Some(12.0));
        assert_eq!(m.value("bridge_checkpoint", &[("partition", "1")]), Some(30.0));
        assert_eq!(m.value("missing", &[]), None);
        assert_eq!(
            m.buckets("lat"),
            vec![(1.0, 2.0), (2.0, 6.0), (f64::INFINITY, 8.0)]
        );
        assert_eq!(m.buckets("h"), vec![(0.5, 1.0), (f64::INFINITY, 4.0)]);
        let before = [(1.0, 0.0), (2.0, 0.0), (f64::INFINITY, 0.0)];
        assert_eq!(quantile_between(&before, &m.buckets("lat"), 0.25), Some(1.0));
        assert_eq!(quantile_between(&before, &m.buckets("lat"), 0.5), Some(1.5));
        assert_eq!(quantile_between(&before, &m.buckets("lat"), 1.0), Some(2.0));
        assert_eq!(quantile_between(&m.buckets("lat"), &m.buckets("lat"), 0.5), None);
    }
}
