//! A process's start time from `/proc/<pid>/stat` (field 22, `starttime`,
//! in clock ticks since boot). A pid alone is not an identity: after our
//! `vmm` dies the kernel may give its pid to any other process. The pair
//! (pid, start time) is stored with each running VM and checked before the
//! agent re-adopts, signals or kills that pid after a restart.

use std::io;

/// Field 22 of a `/proc/<pid>/stat` line. The second field, the command
/// name, is in parentheses and may itself hold spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the command come fields 3 (state) onwards: 22 is the 20th.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The start time of process `pid`; `NotFound` if there is no such
/// process, `InvalidData` if its stat line cannot be read as expected.
pub fn process_start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: no start time in {stat:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_a_tricky_command_name() {
        let stat = "4242 (vmm (vm) x) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 \
                    3 0 987654 12345678 300 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for stat in [
            "",
            "1 (x) S 1",
            "no parens at all",
            "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 x",
        ] {
            assert_eq!(parse_start_time(stat), None, "{stat}");
        }
    }

    #[test]
    fn our_own_start_time_is_stable() {
        let me = std::process::id();
        let first = process_start_time(me).unwrap();
        assert_eq!(process_start_time(me).unwrap(), first);
        assert_eq!(
            process_start_time(u32::MAX).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
