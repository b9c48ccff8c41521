defmodule Worker.Runtime do
  @moduledoc """
  Compiles and runs functions of four kinds, told by their exports (see
  `Worker.Runtime.Module` and docs/functions.md): FunLess modules, WASI
  commands, and WASI 0.2 command and HTTP components.

  The work happens in Rust (`native/`), on one global Wasmtime engine:

    * `compile/1` validates and compiles a module in a child process
      (`fl-compile`), then links it, so import and export problems surface
      there (`Worker.Runtime.Module`);
    * `invoke/3` creates a fresh instance for each call and runs it in the
      calling process, in slices of about one epoch tick (100 µs,
      `FL_EPOCH_TICK_US`; up to 1 ms for a slice that starts while no other
      runs): the guest runs on a stack of its own, yields at
      every slice, and never holds a scheduler for long. While it waits on
      outbound HTTP it costs nothing (`Worker.Runtime.Invocation`).

  The engine is made once per VM, with the settings `configure/1` gives it
  (the application does that when it starts); until then, every call
  returns `{:error, {:runtime_unavailable, _}}`.

  Lines the function logs (`__console_log`, WASI stdout and stderr) reach
  `Logger` as they are produced, with metadata `fl_stream` (`:console`,
  `:stdout`, `:stderr`, or `:host` for the worker's notes about the call)
  and whatever `:metadata` the caller passes.

  ## Errors

  Every error is `{:error, reason}`, with `reason` one of the shapes of
  `t:compile_error/0` and `t:invoke_error/0`: stable, and part of the API.
  Bad options are not errors: they raise `ArgumentError`.
  """

  alias Worker.Native
  alias Worker.Runtime.{Invocation, Module, Settings}

  @type compile_error :: Module.compile_error()
  @type invoke_error :: Invocation.invoke_error()

  @doc """
  Starts the native runtime with `settings`, once per VM.

  Returns `:ok`, also when it already runs with these very settings (a
  second start of the application, say). Settings cannot change while the
  VM runs: other settings give `{:error, {:runtime_configured, reason}}`
  and the runtime keeps those it started with.
  `{:error, {:runtime_unavailable, reason}}` means the engine refused them
  (a pool too large for the address space, for example); every later call
  then returns that error.
  """
  @spec configure(Settings.t()) ::
          :ok | {:error, {:runtime_configured, String.t()} | {:runtime_unavailable, String.t()}}
  def configure(%Settings{} = settings), do: Native.runtime_configure(settings)

  @doc """
  The native runtime's default settings. The default of
  `keep_resident_bytes` depends on the kernel: 1 MiB where the
  `PAGEMAP_SCAN` ioctl works (Linux 6.7 and later), else 0.
  """
  @spec default_settings() :: Settings.t()
  def default_settings, do: Native.runtime_defaults()

  defdelegate compile(wasm), to: Module
  defdelegate serialize(module), to: Module
  defdelegate load(artifact, wasm_bytes), to: Module
  defdelegate fingerprint(), to: Module

  defdelegate invoke(module, args, opts \\ []), to: Invocation
  defdelegate invoke_with_stats(module, args, opts \\ []), to: Invocation
  defdelegate encode_args(args), to: Invocation
  defdelegate check_http_allow(entries), to: Invocation

  @doc """
  Live figures from the native runtime, node-wide. Reading them changes
  nothing: every reader sees the same figures.

    * `:in_flight` - invocations that exist right now, in any process;
    * `:slice_bounds_us` - the upper bounds, in microseconds, of the
      buckets of a histogram of time slices (how long a guest held the
      scheduler that polled it, each time);
    * `:slice_buckets` - slices at most each bound long, since the VM
      started: cumulative, one count per bound;
    * `:slice_count` and `:slice_sum_us` - all slices, and their total
      length in microseconds.
  """
  @spec stats() :: %{
          in_flight: non_neg_integer(),
          slice_bounds_us: [pos_integer()],
          slice_buckets: [non_neg_integer()],
          slice_count: non_neg_integer(),
          slice_sum_us: non_neg_integer()
        }
  def stats, do: Native.runtime_stats()
end
