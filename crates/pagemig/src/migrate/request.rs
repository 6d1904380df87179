//! What a migration is asked to do: which memory, to which node, with which options.

use std::marker::PhantomData;
use std::ops::Range;
use std::time::Duration;

use crate::account::{ChargeTo, Verify};
use crate::copy::{EngineKind, Placement};
use crate::process::Process;
use crate::sys::Mapping;
use crate::topology::{NodeId, NodeSet};

/// A migration: which memory moves to which node, and how. The lifetime is that of a
/// [`Mapping`] whose pages move ([`Request::mapping`]), borrowed exclusively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Private: ranges of own memory stay with the request (and borrow) that vouches for them.
    memory: Memory,
    /// Target node.
    pub to: NodeId,
    /// How.
    pub options: Options,
    borrow: PhantomData<&'a mut Mapping>,
}

/// Which memory a [`Request`] moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// Pages of a process the caller may ptrace (the calling process included).
    Process {
        /// Whose pages.
        process: Process,
        /// Which of its memory.
        selection: Selection,
        /// Only pages now on these nodes.
        from: Option<NodeSet>,
    },
    /// Page-aligned ranges of the caller's anonymous private memory, which the remap path may
    /// replace in place: in a [`Request`] only by [`Request::own`] (whose caller keeps its
    /// contract) and [`Request::mapping`] (which borrows the [`Mapping`]).
    Own(Vec<Range<usize>>),
}

/// Which memory of a process to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every mapping (except the kernel's `[vdso]`, `[vvar]`, `[vsyscall]`).
    All,
    /// These address ranges (rounded out to whole pages).
    Ranges(Vec<Range<usize>>),
    /// Mappings matching a pattern (see [`crate::procfs::VmArea::matches`]).
    Mappings(String),
}

/// How many threads: the planner's choice, or a fixed count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// As the planner chooses.
    #[default]
    Auto,
    /// Exactly this many.
    Count(usize),
}

impl std::str::FromStr for Threads {
    type Err = String;
    /// `auto` or a positive number.
    fn from_str(s: &str) -> Result<Self, String> {
        match (s, s.parse::<usize>()) {
            ("auto", _) => Ok(Threads::Auto),
            (_, Ok(n)) if n > 0 => Ok(Threads::Count(n)),
            _ => Err(format!("expected auto or a positive number, got {s:?}")),
        }
    }
}

/// Which path the caller allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathChoice {
    /// The planner's choice: the remap path for own memory where it works and the cost model
    /// says it is faster, the kernel path otherwise.
    #[default]
    Auto,
    /// Always `move_pages(2)`.
    Kernel,
}

/// How the caller wants a migration done; every field has a default the planner fills in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// Count what would move, move nothing.
    pub dry_run: bool,
    /// Also move pages shared with other processes (`MPOL_MF_MOVE_ALL`, needs `CAP_SYS_NICE`).
    pub move_all: bool,
    /// Base pages per `move_pages` call (kernel path) or per write-protected batch (remap path);
    /// `None`: [`DEFAULT_BATCH`].
    pub batch: Option<usize>,
    /// Longest time one kernel call may hold the target's pages (kernel path).
    pub max_stall: Option<Duration>,
    /// Who pays for the CPU time.
    pub charge: ChargeTo,
    /// Threads that move or copy.
    pub threads: Threads,
    /// Where those threads run (`None`: the planner's choice).
    pub placement: Option<Placement>,
    /// Which path may be used.
    pub path: PathChoice,
    /// The copy engine of the remap path (`None`: the planner's choice).
    pub engine: Option<EngineKind>,
    /// How the remap path checks the new pages.
    pub verify: Verify,
}

/// Base pages per call or batch when the request does not say.
pub const DEFAULT_BATCH: usize = 4096;

impl Options {
    /// Base pages per call or batch.
    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(DEFAULT_BATCH).max(1)
    }
}

impl<'a> Request<'a> {
    /// Moves `selection` of `process` to node `to`, with the default options.
    pub fn process(process: Process, selection: Selection, to: NodeId) -> Self {
        let memory = Memory::Process {
            process,
            selection,
            from: None,
        };
        Request::new(memory, to)
    }

    /// Moves `ranges` of the calling process's own memory to node `to`; the planner may move
    /// them in place with the remap path.
    ///
    /// # Safety
    /// Each range must keep the contract of [`super::remap::migrate_range`] while the request
    /// runs.
    // An `unsafe fn` with no unsafe operation: its contract is what the remap path relies on.
    #[allow(unsafe_code)]
    pub unsafe fn own(ranges: Vec<Range<usize>>, to: NodeId) -> Self {
        Request::new(Memory::Own(ranges), to)
    }

    fn new(memory: Memory, to: NodeId) -> Self {
        Request {
            memory,
            to,
            options: Options::default(),
            borrow: PhantomData,
        }
    }

    /// Moves the bytes `range` (offsets, rounded out to whole pages) of `mapping` to node `to`,
    /// keeping their addresses; the mapping stays borrowed while the request lives.
    pub fn mapping(mapping: &'a mut Mapping, range: Range<usize>, to: NodeId) -> Self {
        let page = crate::sys::base_page_size();
        let base = mapping.as_ptr() as usize;
        let end = range.end.min(mapping.len()).next_multiple_of(page);
        let start = (range.start / page * page).min(end);
        let range = base + start..base + end;
        Request::new(Memory::Own(Vec::from([range])), to)
    }

    /// Which memory moves.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The same request, for the pages now on `from` only (a request of a process's pages).
    pub fn from_nodes(mut self, from: NodeSet) -> Self {
        if let Memory::Process { from: f, .. } = &mut self.memory {
            *f = Some(from);
        }
        self
    }

    /// The same request with these options.
    pub fn with(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The process whose pages move.
    pub fn process_moved(&self) -> Process {
        match &self.memory {
            Memory::Process { process, .. } => *process,
            Memory::Own(_) => Process::Current,
        }
    }
}

/// Progress of a migration, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// This many pages will be moved.
    Planned(u64),
    /// This many more pages were handled.
    Moved(u64),
}
