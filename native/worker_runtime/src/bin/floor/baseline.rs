//! The baseline the component floor is compared with: the same component
//! run the way a default Wasmtime 48 embedding runs it, as `wasmtime serve`
//! and `wasmtime run` do: `Config::new()` with async and the default pooling
//! allocator, WASI 0.2 and wasi:http from wasmtime-wasi, a fresh store and
//! instance per invocation from an `InstancePre`. No epoch interruption, no
//! limits, no slices: only what any host needs.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use wasmtime::component::{Component, InstancePre, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: NoNetwork,
}

/// wasmtime-wasi-http's default sender is a cargo feature the worker does
/// not build; the floor's functions make no requests.
struct NoNetwork;

impl WasiHttpHooks for NoNetwork {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _done: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

pub struct Baseline {
    pre: InstancePre<State>,
    http: bool,
    tokio: tokio::runtime::Runtime,
}

impl Baseline {
    pub fn new(wasm: &[u8]) -> wasmtime::Result<Baseline> {
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(
            PoolingAllocationConfig::default(),
        ));
        let engine = Engine::new(&config)?;
        let component = Component::new(&engine, wasm)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let http = component
            .component_type()
            .exports(&engine)
            .any(|(name, _)| name.starts_with(worker_runtime::kinds::http_component::HTTP_HANDLER));
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Baseline {
            pre: linker.instantiate_pre(&component)?,
            http,
            tokio,
        })
    }

    /// One invocation with `input`; what it answered.
    pub fn invoke(&self, input: &[u8]) -> wasmtime::Result<Vec<u8>> {
        let input = Bytes::copy_from_slice(input);
        self.tokio.block_on(async {
            if self.http {
                self.serve(input).await
            } else {
                self.run(input).await
            }
        })
    }

    fn store(&self, wasi: WasiCtx) -> Store<State> {
        Store::new(
            self.pre.engine(),
            State {
                wasi,
                table: ResourceTable::new(),
                http: WasiHttpCtx::new(),
                hooks: NoNetwork,
            },
        )
    }

    async fn run(&self, input: Bytes) -> wasmtime::Result<Vec<u8>> {
        let stdout = MemoryOutputPipe::new(4 << 20);
        let wasi = WasiCtx::builder()
            .stdin(MemoryInputPipe::new(input))
            .stdout(stdout.clone())
            .build();
        let mut store = self.store(wasi);
        let instance = self.pre.instantiate_async(&mut store).await?;
        let run = instance
            .get_export_index(&mut store, None, "wasi:cli/run@0.2.0")
            .and_then(|i| instance.get_export_index(&mut store, Some(&i), "run"))
            .ok_or_else(|| wasmtime::format_err!("no wasi:cli/run"))?;
        let run = instance.get_typed_func::<(), (Result<(), ()>,)>(&mut store, run)?;
        let (ended,) = run.call_async(&mut store, ()).await?;
        ended.map_err(|()| wasmtime::format_err!("run failed"))?;
        Ok(stdout.contents().to_vec())
    }

    async fn serve(&self, input: Bytes) -> wasmtime::Result<Vec<u8>> {
        let mut store = self.store(WasiCtx::builder().build());
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri("http://localhost/")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(
                Full::new(input)
                    .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} }),
            )?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let out = store.data_mut().http().new_response_outparam(tx)?;
        let instance = self.pre.instantiate_async(&mut store).await?;
        let handle = instance
            .get_export_index(&mut store, None, "wasi:http/incoming-handler@0.2.0")
            .and_then(|i| instance.get_export_index(&mut store, Some(&i), "handle"))
            .ok_or_else(|| wasmtime::format_err!("no wasi:http/incoming-handler"))?;
        type Args = (
            Resource<HostIncomingRequest>,
            Resource<HostResponseOutparam>,
        );
        let handle = instance.get_typed_func::<Args, ()>(&mut store, handle)?;
        let guest = async move {
            let called = handle.call_async(&mut store, (request, out)).await;
            drop(store);
            called
        };
        let reader = async move {
            let response: Result<_, ErrorCode> = rx.await?;
            let body = response?.into_body().collect().await?;
            wasmtime::Result::<_>::Ok(body.to_bytes().to_vec())
        };
        let (called, body) = tokio::join!(guest, reader);
        called?;
        body
    }
}
