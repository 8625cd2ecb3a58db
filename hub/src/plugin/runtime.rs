//! The sandbox: one wasmtime `Engine` for every plugin, modules compiled once (and cached on
//! disk), and a plugin [`Instance`] whose every entry point runs with a fuel budget and a
//! memory cap. A fault (trap, out of fuel, over memory) ends the call and is returned as a
//! [`Fault`]; the caller decides what it costs the plugin.

use std::path::Path;

use machinomy_sdk::abi;
use wasmtime::{
    Config, Engine, Extern, ExternType, InstancePre, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder,
    Trap, TypedFunc, ValType,
};

use super::PluginError;
use super::abi_host::{self, HostState, Session};

/// Wasm call stack per plugin: deep enough for ordinary Rust, small enough that a runaway
/// recursion traps quickly.
const MAX_WASM_STACK: usize = 512 * 1024;
const MIB: u64 = 1024 * 1024;

/// The compiler and linker shared by every plugin.
#[derive(Clone)]
pub(crate) struct Runtime {
    engine: Engine,
    linker: std::sync::Arc<Linker<HostState>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// Why a call into a plugin ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault(pub(crate) String);

/// Why a fresh instance could not be made, with the session it was given (to carry on with).
#[derive(Debug)]
pub(crate) struct NotStarted {
    pub(crate) fault: Fault,
    pub(crate) session: Session,
    /// No later try can succeed (the module speaks another ABI): counting faults towards a
    /// quarantine would only retry it.
    pub(crate) permanent: bool,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Runtime {
    pub(crate) fn new() -> Result<Runtime, PluginError> {
        let mut config = Config::new();
        config.consume_fuel(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        let engine = Engine::new(&config).map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        abi_host::define(&mut linker).map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        Ok(Runtime { engine, linker: std::sync::Arc::new(linker) })
    }

    /// Identifies compiled code this engine can load; part of the cache file's name.
    pub(crate) fn engine_tag(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Validates and compiles `wasm`, then checks it against the ABI: the exports it must have,
    /// the shapes of those it may have, and that every import is one this hub provides.
    pub(crate) fn compile(&self, wasm: &[u8]) -> Result<Module, PluginError> {
        if !wasm.starts_with(b"\0asm") {
            return Err(PluginError::BadModule("the file is not a WebAssembly module".to_owned()));
        }
        let module = Module::new(&self.engine, wasm).map_err(|e| PluginError::BadModule(first_line(&e)))?;
        self.check(&module)?;
        Ok(module)
    }

    fn check(&self, module: &Module) -> Result<(), PluginError> {
        for import in module.imports() {
            if import.module() != abi::MODULE {
                return Err(PluginError::BadModule(format!(
                    "it imports {}::{}, but plugins may only import from {:?}",
                    import.module(),
                    import.name(),
                    abi::MODULE
                )));
            }
            if !abi_host::IMPORTS.contains(&import.name()) {
                return Err(PluginError::BadModule(format!(
                    "it imports {}::{}, which this hub does not provide (plugin ABI {})",
                    import.module(),
                    import.name(),
                    abi::ABI_VERSION
                )));
            }
        }
        let export = |name: &str| module.get_export(name);
        match export("memory") {
            Some(ExternType::Memory(_)) => {}
            _ => return Err(PluginError::BadModule("it exports no memory".to_owned())),
        }
        for (name, params, results) in ENTRY_POINTS {
            match export(name) {
                Some(ExternType::Func(ty)) => {
                    let same = ty.params().map(|p| p.to_string()).eq(params.iter().map(|p| p.to_string()))
                        && ty.results().map(|r| r.to_string()).eq(results.iter().map(|r| r.to_string()));
                    if !same {
                        return Err(PluginError::BadModule(format!(
                            "its export {name} has the wrong signature ({ty}); see the plugin ABI"
                        )));
                    }
                }
                Some(_) => return Err(PluginError::BadModule(format!("its export {name} is not a function"))),
                None if name == "machinomy_abi_version" => {
                    // The SDK's macro is what exports it; a crate that forgot it exports nothing.
                    return Err(PluginError::BadModule(format!(
                        "it does not export {name} (did the plugin call `machinomy_sdk::export_plugin!`?)"
                    )));
                }
                None if REQUIRED.contains(&name) => {
                    return Err(PluginError::BadModule(format!(
                        "it does not export {name} (build it with machinomy-sdk)"
                    )));
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Loads compiled code written by [`Runtime::save_compiled`], if it is there, intact, and
    /// for this engine; `None` means compile again.
    pub(crate) fn load_compiled(&self, path: &Path, expected: &blake3::Hash) -> Option<Module> {
        let bytes = std::fs::read(path).ok()?;
        if blake3::hash(&bytes) != *expected {
            tracing::warn!(path = %path.display(), "compiled plugin does not match its recorded hash; recompiling");
            return None;
        }
        // SAFETY: wasmtime requires that deserialized bytes come from `Module::serialize` of a
        // compatible engine and were not tampered with. This hub wrote them itself
        // (`save_compiled`), the file name carries the engine's compatibility tag, and the bytes
        // match the BLAKE3 hash recorded in the store when they were written.
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize(&self.engine, &bytes) };
        match module {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %first_line(&e), "cannot load compiled plugin; recompiling");
                None
            }
        }
    }

    /// Writes `module`'s compiled code to `path`; returns its hash for the store.
    pub(crate) fn save_compiled(&self, module: &Module, path: &Path) -> Result<blake3::Hash, PluginError> {
        let bytes = module.serialize().map_err(|e| PluginError::Runtime(first_line(&e)))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| PluginError::Io(format!("{}: {e}", path.display())))?;
        Ok(blake3::hash(&bytes))
    }

    pub(crate) fn prepare(&self, module: &Module) -> Result<InstancePre<HostState>, PluginError> {
        self.linker.instantiate_pre(module).map_err(|e| PluginError::BadModule(first_line(&e)))
    }

    /// A fresh instance of a prepared module, with `session`'s grants and limits; its ABI
    /// version is checked and nothing else runs.
    pub(crate) fn instantiate(
        &self,
        pre: &InstancePre<HostState>,
        session: Session,
        memory_mib: u64,
        fuel_per_event: u64,
    ) -> Result<Instance, Box<NotStarted>> {
        let limits = store_limits(memory_mib);
        let mut store = Store::new(&self.engine, HostState::new(session, limits));
        store.limiter(|state| &mut state.limits);
        let mut permanent = false;
        let result = (|| -> Result<Entries, Fault> {
            store.set_fuel(fuel_per_event).map_err(|e| Fault(first_line(&e)))?;
            let instance = pre.instantiate(&mut store).map_err(|e| fault(&e, fuel_per_event))?;
            let memory = match instance.get_export(&mut store, "memory") {
                Some(Extern::Memory(memory)) => memory,
                _ => return Err(Fault("it exports no memory".to_owned())),
            };
            store.data_mut().memory = Some(memory);
            let entries = Entries::find(&instance, &mut store)?;
            let version = entries.abi_version.call(&mut store, ()).map_err(|e| fault(&e, fuel_per_event))?;
            if version != abi::ABI_VERSION {
                permanent = true;
                return Err(Fault(incompatible(version)));
            }
            Ok(entries)
        })();
        match result {
            Ok(entries) => Ok(Instance { store, entries, fuel_per_event }),
            Err(fault) => Err(Box::new(NotStarted { fault, session: store.into_data().session, permanent })),
        }
    }
}

/// What the owner reads about a module built for another plugin ABI.
pub(crate) fn incompatible(version: i32) -> String {
    format!(
        "it speaks plugin ABI {version}; this hub speaks {} (rebuild it with a machinomy-sdk for ABI {})",
        abi::ABI_VERSION,
        abi::ABI_VERSION
    )
}

/// The exports a plugin must have; the rest of [`ENTRY_POINTS`] are optional.
const REQUIRED: [&str; 2] = ["machinomy_abi_version", "machinomy_alloc"];
const I32: ValType = ValType::I32;
const I64: ValType = ValType::I64;
/// Every export the host calls, with its parameter and result types.
const ENTRY_POINTS: [(&str, &[ValType], &[ValType]); 7] = [
    ("machinomy_abi_version", &[], &[I32]),
    ("machinomy_alloc", &[I32], &[I32]),
    ("on_start", &[], &[]),
    ("on_message", &[I32, I32, I32, I32], &[]),
    ("on_timer", &[I64], &[]),
    ("on_spend_result", &[I64, I32, I32, I32], &[]),
    ("on_service_call", &[I64, I32, I32, I32, I32, I32, I32], &[]),
];

fn store_limits(memory_mib: u64) -> StoreLimits {
    let bytes = usize::try_from(memory_mib.saturating_mul(MIB)).unwrap_or(usize::MAX);
    StoreLimitsBuilder::new()
        .memory_size(bytes)
        .instances(1)
        .memories(1)
        .tables(4)
        .table_elements(100_000)
        // A failed memory.grow traps, so a memory bomb ends its event as a fault instead of
        // leaving a guest that ignores -1 limping on.
        .trap_on_grow_failure(true)
        .build()
}

/// The first line of an error chain, for the owner (wasmtime adds backtraces below).
pub(crate) fn first_line(e: &wasmtime::Error) -> String {
    // A trap's own message is wrapped in "error while executing at wasm backtrace: …".
    let text = if e.downcast_ref::<Trap>().is_some() { format!("{e:#}") } else { e.root_cause().to_string() };
    text.lines().next().unwrap_or("unknown error").to_owned()
}

fn fault(e: &wasmtime::Error, fuel_per_event: u64) -> Fault {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Fault(format!("ran out of fuel ({fuel_per_event} per event)")),
        Some(Trap::StackOverflow) => Fault("overflowed its stack".to_owned()),
        // How a Rust plugin's panic ends; the SDK logs the panic's message just before.
        Some(Trap::UnreachableCodeReached) => {
            Fault("trapped: it reached `unreachable` (a Rust plugin panicked: its log says where)".to_owned())
        }
        // wasmtime's text starts "wasm trap: ".
        Some(trap) => {
            let text = trap.to_string();
            Fault(format!("trapped: {}", text.strip_prefix("wasm trap: ").unwrap_or(&text)))
        }
        None => {
            let text = first_line(e);
            if text.contains("forcing a memory growth failure") || text.contains("memory minimum size") {
                Fault("went over its memory limit".to_owned())
            } else {
                Fault(text)
            }
        }
    }
}

/// `on_service_call(call, service_ptr, service_len, body_ptr, body_len, from_ptr, from_len)`.
type ServiceCallArgs = (i64, i32, i32, i32, i32, i32, i32);

struct Entries {
    abi_version: TypedFunc<(), i32>,
    alloc: TypedFunc<i32, i32>,
    on_start: Option<TypedFunc<(), ()>>,
    on_message: Option<TypedFunc<(i32, i32, i32, i32), ()>>,
    on_timer: Option<TypedFunc<i64, ()>>,
    on_spend_result: Option<TypedFunc<(i64, i32, i32, i32), ()>>,
    on_service_call: Option<TypedFunc<ServiceCallArgs, ()>>,
}

impl Entries {
    fn find(instance: &wasmtime::Instance, store: &mut Store<HostState>) -> Result<Entries, Fault> {
        let required = |e: wasmtime::Error| Fault(first_line(&e));
        Ok(Entries {
            abi_version: instance.get_typed_func(&mut *store, "machinomy_abi_version").map_err(required)?,
            alloc: instance.get_typed_func(&mut *store, "machinomy_alloc").map_err(required)?,
            on_start: instance.get_typed_func(&mut *store, "on_start").ok(),
            on_message: instance.get_typed_func(&mut *store, "on_message").ok(),
            on_timer: instance.get_typed_func(&mut *store, "on_timer").ok(),
            on_spend_result: instance.get_typed_func(&mut *store, "on_spend_result").ok(),
            on_service_call: instance.get_typed_func(&mut *store, "on_service_call").ok(),
        })
    }
}

/// One live plugin instance.
pub(crate) struct Instance {
    store: Store<HostState>,
    entries: Entries,
    fuel_per_event: u64,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("plugin", &self.store.data().session.name).finish_non_exhaustive()
    }
}

impl Instance {
    pub(crate) fn session(&self) -> &Session {
        &self.store.data().session
    }

    pub(crate) fn session_mut(&mut self) -> &mut Session {
        &mut self.store.data_mut().session
    }

    /// Ends the instance, keeping the plugin's session (subscriptions, timers, quotas).
    pub(crate) fn into_session(self) -> Session {
        self.store.into_data().session
    }

    fn begin_event(&mut self) -> Result<(), Fault> {
        self.store.data_mut().begin_event();
        self.store.set_fuel(self.fuel_per_event).map_err(|e| Fault(first_line(&e)))
    }

    /// Copies `parts` into one guest allocation (see the ABI's buffer rule) and returns each
    /// part's (pointer, length).
    fn write_args<const N: usize>(&mut self, parts: [&[u8]; N]) -> Result<[(i32, i32); N], Fault> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut placed = [(0i32, 0i32); N];
        if total == 0 {
            return Ok(placed);
        }
        let too_big = || Fault("an event's arguments are too large for wasm32".to_owned());
        let size = i32::try_from(total).map_err(|_| too_big())?;
        let base = self.entries.alloc.call(&mut self.store, size).map_err(|e| fault(&e, self.fuel_per_event))?;
        if base == 0 {
            return Err(Fault(format!("machinomy_alloc({total}) returned no memory")));
        }
        let memory = self.memory()?;
        let mut offset = usize::try_from(base as u32).map_err(|_| too_big())?;
        for (slot, part) in placed.iter_mut().zip(parts) {
            memory
                .write(&mut self.store, offset, part)
                .map_err(|_| Fault("machinomy_alloc returned memory outside the module's memory".to_owned()))?;
            let ptr = i32::try_from(offset).map_err(|_| too_big())?;
            *slot = (ptr, i32::try_from(part.len()).map_err(|_| too_big())?);
            offset += part.len();
        }
        Ok(placed)
    }

    fn memory(&self) -> Result<Memory, Fault> {
        self.store.data().memory.ok_or_else(|| Fault("the instance has no memory".to_owned()))
    }

    fn finish(&mut self, result: wasmtime::Result<()>) -> Result<(), Fault> {
        result.map_err(|e| fault(&e, self.fuel_per_event))
    }

    pub(crate) fn on_start(&mut self) -> Result<(), Fault> {
        let Some(f) = self.entries.on_start.clone() else { return Ok(()) };
        self.begin_event()?;
        let result = f.call(&mut self.store, ());
        self.finish(result)
    }

    pub(crate) fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<(), Fault> {
        let Some(f) = self.entries.on_message.clone() else { return Ok(()) };
        self.begin_event()?;
        let [(tp, tl), (pp, pl)] = self.write_args([topic.as_bytes(), payload])?;
        let result = f.call(&mut self.store, (tp, tl, pp, pl));
        self.finish(result)
    }

    pub(crate) fn on_timer(&mut self, timer: u64) -> Result<(), Fault> {
        let Some(f) = self.entries.on_timer.clone() else { return Ok(()) };
        self.begin_event()?;
        let result = f.call(&mut self.store, timer as i64);
        self.finish(result)
    }

    pub(crate) fn on_spend_result(&mut self, request: u64, status: i32, detail: &[u8]) -> Result<(), Fault> {
        let Some(f) = self.entries.on_spend_result.clone() else { return Ok(()) };
        self.begin_event()?;
        let [(dp, dl)] = self.write_args([detail])?;
        let result = f.call(&mut self.store, (request as i64, status, dp, dl));
        self.finish(result)
    }

    pub(crate) fn has_on_service_call(&self) -> bool {
        self.entries.on_service_call.is_some()
    }

    pub(crate) fn on_service_call(&mut self, call: u64, service: &str, body: &[u8], from: &str) -> Result<(), Fault> {
        let Some(f) = self.entries.on_service_call.clone() else { return Ok(()) };
        self.begin_event()?;
        let [(sp, sl), (bp, bl), (fp, fl)] = self.write_args([service.as_bytes(), body, from.as_bytes()])?;
        let result = f.call(&mut self.store, (call as i64, sp, sl, bp, bl, fp, fl));
        self.finish(result)
    }
}
