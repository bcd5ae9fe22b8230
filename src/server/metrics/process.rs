//! `process_*` metrics read from `/proc/self` at scrape time.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `process_*` metrics of this process, read from `/proc/self` at each scrape
/// (as kubert and the Go client report them). Where `/proc` is missing or
/// unreadable the affected series are left out.
#[derive(Debug)]
pub(super) struct ProcessCollector {
    /// Clock ticks per second of the times in `/proc/self/stat`.
    ticks_per_second: f64,
    page_size: u64,
    /// Unix time the process started, computed once.
    start_time: Option<f64>,
}

/// Entries of the ELF auxiliary vector (`/proc/self/auxv`), see getauxval(3).
pub(super) const AT_PAGESZ: usize = 6;
pub(super) const AT_CLKTCK: usize = 17;

/// The numbers of `/proc/self/stat` after the command name (field 3 onwards,
/// see proc_pid_stat(5)): `[fields[STAT_UTIME], ...]`.
pub(super) const STAT_UTIME: usize = 14 - 3;
pub(super) const STAT_STIME: usize = 15 - 3;
pub(super) const STAT_THREADS: usize = 20 - 3;
pub(super) const STAT_STARTTIME: usize = 22 - 3;
pub(super) const STAT_VSIZE: usize = 23 - 3;
pub(super) const STAT_RSS: usize = 24 - 3;

impl ProcessCollector {
    pub(super) fn new() -> ProcessCollector {
        let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
        let ticks = auxv_value(&auxv, AT_CLKTCK).filter(|&t| t > 0).unwrap_or(100);
        let page_size = auxv_value(&auxv, AT_PAGESZ).filter(|&p| p > 0).unwrap_or(4096);
        let ticks_per_second = ticks as f64;
        let start_time = (|| {
            let boot: u64 = std::fs::read_to_string("/proc/stat")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("btime "))?
                .trim()
                .parse()
                .ok()?;
            let started: u64 = stat_fields(&std::fs::read_to_string("/proc/self/stat").ok()?)?
                .get(STAT_STARTTIME)?
                .parse()
                .ok()?;
            Some(boot as f64 + started as f64 / ticks_per_second)
        })()
        .or_else(|| {
            // No /proc: "now" is close enough, as metrics are set up at start.
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs_f64())
        });
        ProcessCollector {
            ticks_per_second,
            page_size: page_size as u64,
            start_time,
        }
    }
}

/// One value of the auxiliary vector: native-endian (type, value) word pairs.
pub(super) fn auxv_value(auxv: &[u8], key: usize) -> Option<usize> {
    const WORD: usize = std::mem::size_of::<usize>();
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let (k, v) = pair.split_at(WORD);
        let k = usize::from_ne_bytes(k.try_into().ok()?);
        let v = usize::from_ne_bytes(v.try_into().ok()?);
        (k == key).then_some(v)
    })
}

/// The fields of `/proc/self/stat` from the state (field 3) on; the command
/// name before them is in parentheses and may contain spaces.
pub(super) fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// The soft `Max open files` limit from `/proc/self/limits` (none if unlimited).
pub(super) fn max_open_files(limits: &str) -> Option<i64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One gauge series, left out when `value` is unknown.
fn const_gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<N>,
) -> fmt::Result {
    let Some(value) = value else {
        return Ok(());
    };
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields = stat_fields(&stat).unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(STAT_UTIME), field(STAT_STIME)) {
            let cpu = ConstCounter::new((user + system) as f64 / self.ticks_per_second);
            cpu.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
        }
        const_gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            field(STAT_RSS).and_then(|pages| i64::try_from(pages.saturating_mul(self.page_size)).ok()),
        )?;
        const_gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            field(STAT_VSIZE).and_then(|bytes| i64::try_from(bytes).ok()),
        )?;
        const_gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            std::fs::read_dir("/proc/self/fd")
                .ok()
                .and_then(|dir| i64::try_from(dir.count()).ok()),
        )?;
        const_gauge(
            e,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|limits| max_open_files(&limits)),
        )?;
        const_gauge(
            e,
            "process_threads",
            "Number of OS threads in the process.",
            field(STAT_THREADS).and_then(|n| i64::try_from(n).ok()),
        )?;
        const_gauge(
            e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            self.start_time,
        )
    }
}
