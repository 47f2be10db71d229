//! How much memory glibc's allocator may hold on to.
//!
//! glibc gives each thread that meets a locked arena a new one, up to eight per core, and frees
//! nothing from one arena into another. A relay runs six transactional producers, each with
//! librdkafka's own threads, and the tokio workers that copy every record into them: measured
//! during a 100,000-row drain (docs/performance.md), its anonymous memory sat in two 17–19 MB
//! arenas, a 15 MB main heap and several smaller ones, 81 MiB of RSS for a working set of about
//! half that. With one arena the same drain peaked at 56 MiB at the same rate, since glibc's
//! per-thread caches already serve most small allocations without the arena's lock.
//!
//! So every service binary starts with one arena, unless the operator chose otherwise through
//! glibc's own settings (`MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`),
//! which then win.

/// The arenas a service starts with when the operator did not choose.
pub const DEFAULT_MALLOC_ARENAS: i32 = 1;

/// Whether the environment already chooses glibc's arena count.
fn operator_chose_arenas(malloc_arena_max: Option<&str>, glibc_tunables: Option<&str>) -> bool {
    malloc_arena_max.is_some() || glibc_tunables.is_some_and(|tunables| tunables.contains("glibc.malloc.arena_max"))
}

/// Limits glibc's allocator to [`DEFAULT_MALLOC_ARENAS`] arenas unless the environment already
/// set a limit. Call it first in `main`, before any thread starts. Elsewhere than glibc, nothing.
pub fn limit_allocator_arenas() {
    let malloc_arena_max = std::env::var("MALLOC_ARENA_MAX").ok();
    let glibc_tunables = std::env::var("GLIBC_TUNABLES").ok();
    if operator_chose_arenas(malloc_arena_max.as_deref(), glibc_tunables.as_deref()) {
        return;
    }
    set_arena_max(DEFAULT_MALLOC_ARENAS);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(arenas: i32) {
    // SAFETY: mallopt takes two integers, touches only the allocator's own settings under its
    // own lock, and has no precondition on the caller's memory; a refused value returns 0.
    let accepted = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    if accepted == 0 {
        eprintln!("warning: glibc refused M_ARENA_MAX={arenas}; the allocator keeps its default arenas");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) {}

#[cfg(test)]
mod tests {
    use super::operator_chose_arenas;

    #[test]
    fn an_operators_choice_of_arenas_wins() {
        assert!(!operator_chose_arenas(None, None));
        assert!(operator_chose_arenas(Some("4"), None));
        assert!(operator_chose_arenas(None, Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=8")));
        assert!(!operator_chose_arenas(None, Some("glibc.malloc.tcache_count=0")));
    }
}
