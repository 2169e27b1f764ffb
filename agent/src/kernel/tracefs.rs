//! Tracepoint formats: field offsets are read from `events/<category>/<name>/format` at load
//! time, so a kernel that moved or dropped a field is handled, not misread.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    Mount(#[source] std::io::Error),
    #[error("tracepoint {category}/{name} does not exist on this kernel ({path})")]
    MissingTracepoint {
        category: String,
        name: String,
        path: String,
    },
    #[error("tracepoint {category}/{name}: format has no field {field}")]
    MissingField {
        category: String,
        name: String,
        field: String,
    },
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

impl Format {
    /// Parses the text of a tracepoint `format` file.
    pub fn parse(text: &str) -> Format {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = "";
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                } else if !part.contains(':') && !part.is_empty() {
                    decl = part;
                }
            }
            let name = decl
                .split_whitespace()
                .last()
                .map(|n| n.split('[').next().unwrap_or(n))
                .unwrap_or("");
            if let (false, Some(offset), Some(size)) = (name.is_empty(), offset, size) {
                fields.insert(name.to_string(), Field { offset, size });
            }
        }
        Format { fields }
    }

    pub fn offset(&self, name: &str) -> Option<u32> {
        self.fields.get(name).map(|f| f.offset)
    }
}

/// The tracefs mount point; mounts it at /sys/kernel/tracing when nothing is mounted (a
/// DaemonSet usually has it, a bare VM may not). `OOMPROBE_TRACEFS` overrides the path.
pub fn tracefs_root() -> Result<PathBuf, TracefsError> {
    if let Some(p) = std::env::var_os("OOMPROBE_TRACEFS") {
        return Ok(PathBuf::from(p));
    }
    for candidate in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(candidate).join("events").is_dir() {
            return Ok(PathBuf::from(candidate));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

pub fn read_format(root: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).map_err(|_| TracefsError::MissingTracepoint {
        category: category.to_string(),
        name: name.to_string(),
        path: path.display().to_string(),
    })?;
    Ok(Format::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK_VICTIM_6_18: &str = "name: mark_victim\nID: 609\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;\n\
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;\n\
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;\n\n\
print fmt: \"pid=%d\", REC->pid\n";

    #[test]
    fn parses_fields_and_data_loc() {
        let f = Format::parse(MARK_VICTIM_6_18);
        assert_eq!(f.offset("pid"), Some(8));
        assert_eq!(f.offset("comm"), Some(12));
        assert_eq!(f.offset("anon_rss"), Some(24));
        assert_eq!(
            f.fields["oom_score_adj"],
            Field {
                offset: 64,
                size: 2
            }
        );
        assert_eq!(f.offset("common_type"), Some(0));
        assert_eq!(f.offset("total_vm"), None);
    }

    #[test]
    fn parses_arrays() {
        let f = Format::parse("\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;\n");
        assert_eq!(
            f.fields["comm"],
            Field {
                offset: 20,
                size: 16
            }
        );
    }

    #[test]
    fn old_kernel_with_pid_only() {
        let f = Format::parse("\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n");
        assert_eq!(f.offset("pid"), Some(8));
        assert_eq!(f.fields.len(), 1);
    }
}
