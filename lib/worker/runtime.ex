defmodule Worker.Runtime do
  @moduledoc """
  Compiles and runs functions: FunLess modules, which import host
  functions from `fl_imps` and export `__invoke(len) -> 0 | 1`, and WASI
  commands, which export `_start`, read their arguments (JSON) on stdin and
  print their result on stdout (see `Worker.Runtime.Module` and the
  README's "Writing a function").

  The work happens in Rust (`native/`), on one global Wasmtime engine:

    * `compile/1` validates and compiles a module in a child process
      (`fl-compile`), then links it, so import and export problems surface
      there;
    * `invoke/3` creates a fresh instance for each call and runs it in the
      calling process, in slices of about one epoch tick (100 µs,
      `FL_EPOCH_TICK_US`): the guest runs on a stack of its own, yields at
      every slice, and never holds a scheduler for long. While it waits on
      outbound HTTP it costs nothing.

  The engine is made once per VM, with the settings `configure/1` gives it
  (`Worker.Config` does that when the application starts); until then,
  every call returns `{:error, {:runtime_unavailable, _}}`.

  Lines the function logs (`__console_log`, WASI stdout and stderr) reach
  `Logger` as they are produced, with metadata `fl_stream` (`:console`,
  `:stdout`, `:stderr`, or `:host` for the worker's notes about the call)
  and whatever `:metadata` the caller passes.

  ## Errors

  Every error is `{:error, reason}`, with `reason` one of the shapes below
  (`t:compile_error/0`, `t:invoke_error/0`): stable, and part of the API.
  Bad options are not errors: they raise `ArgumentError`.
  """

  alias Worker.Native
  alias Worker.Runtime.{Module, Settings, Stats}

  require Logger

  # `receive ... after` takes at most 2^32 - 1 ms; keep room for the margin.
  @max_timeout 4_294_000_000
  # arguments (as JSON text) above this run their invocation on dirty
  # schedulers (see start/4)
  @dirty_input_bytes 256 * 1024

  @typedoc """
  Why there is no module:

    * `{:invalid_module, reason}` - the module is refused (see `compile/1`);
    * `{:runtime_unavailable, reason}` - the engine could not start, or has
      no settings yet, or the compiler could not be started;
    * `{:panic, reason}` - a bug in the worker or the compiler; the
      runtime stays usable.
  """
  @type compile_error ::
          {:invalid_module, String.t()}
          | {:runtime_unavailable, String.t()}
          | {:panic, String.t()}

  @typedoc "How an invocation failed; see `invoke/3`."
  @type invoke_error ::
          {:exec_error, String.t()}
          | {:trap, String.t()}
          | :timeout
          | {:invalid_args, String.t()}
          | {:invalid_response, String.t()}
          | :no_response
          | {:bad_return, integer()}
          | {:exit, integer()}
          | {:instantiate, String.t()}
          | {:panic, String.t()}
          | {:runtime_unavailable, String.t()}
          | :cancelled

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

  @doc """
  Compiles a Wasm module (binary, or WAT text).

  The compile runs in a child process (`priv/native/fl-compile`) under OS
  limits: its address space is at most `FL_COMPILE_MAX_MB` (default
  2048), and it is killed after `FL_COMPILE_TIMEOUT_MS` (default 60 000).
  No scheduler waits for it: the calling process waits in `receive`.

  Returns `{:error, {:invalid_module, reason}}` when the module is not valid
  Wasm, imports something the worker does not provide (or with the wrong
  type), lacks `__invoke: (i32) -> i32` or an exported `memory`, asks for
  more memory than the worker's cap, is larger than `FL_MAX_MODULE_MB`, or
  needs more memory or time to compile than the limits above (the reason
  names the limit).
  `{:error, {:runtime_unavailable, reason}}` means the engine itself could
  not start (or the compiler could not), and `{:error, {:panic, reason}}`
  that the compiler panicked.
  """
  @spec compile(binary()) :: {:ok, Module.t()} | {:error, compile_error()}
  def compile(wasm) when is_binary(wasm) do
    timeout = Worker.Config.get(:compile_timeout_ms)
    max_mb = Worker.Config.get(:compile_max_mb)
    ref = make_ref()

    # Once started, the native side always answers: it kills the compiler
    # at `timeout`.
    with :ok <- Native.module_compile(wasm, ref, compiler(), timeout, max_mb) do
      receive do
        {^ref, reply} -> reply
      after
        timeout + 60_000 -> {:error, {:runtime_unavailable, "the compiler did not answer"}}
      end
    end
  end

  def compile(_), do: {:error, {:invalid_module, "expected the module as a binary"}}

  defp compiler, do: Path.join(:code.priv_dir(:worker), "native/fl-compile")

  @doc """
  The compiled form of a module (machine code), to keep and `load/2` later
  without compiling again. Only a runtime with the same `fingerprint/0` can
  load it. `{:error, {:serialize, reason}}` if Wasmtime cannot write it.
  """
  @spec serialize(Module.t()) :: {:ok, binary()} | {:error, {:serialize, String.t()}}
  def serialize(%Module{ref: ref}), do: Native.module_serialize(ref)

  @doc """
  Loads a module from `serialize/1`'s output. `wasm_bytes` is recorded as
  the size of the original binary.

  An artifact holds machine code that runs as it is, so `serialize/1` seals
  it with this node's artifact key (`Worker.Store.use_artifact_key/0`), and
  `load/2` refuses anything else before it reaches Wasmtime: bytes from
  elsewhere, or damaged, are `{:error, {:invalid_module, reason}}`, and so
  is an artifact of another Wasmtime version or configuration.
  """
  @spec load(binary(), non_neg_integer()) :: {:ok, Module.t()} | {:error, compile_error()}
  def load(artifact, wasm_bytes) when is_binary(artifact) and is_integer(wasm_bytes),
    do: Native.module_load(artifact, wasm_bytes)

  @doc """
  The engine's fingerprint: artifacts are only loadable under the same one.
  It cannot change while the VM runs, so it is read from the runtime once
  and kept in `:persistent_term`.
  """
  @spec fingerprint() :: {:ok, String.t()} | {:error, {:runtime_unavailable, String.t()}}
  def fingerprint do
    case :persistent_term.get({__MODULE__, :fingerprint}, nil) do
      nil ->
        with {:ok, text} <- Native.engine_fingerprint() do
          :persistent_term.put({__MODULE__, :fingerprint}, text)
          {:ok, text}
        end

      text ->
        {:ok, text}
    end
  end

  @doc """
  Invokes a compiled function with `args`, which become the JSON text the
  function reads with `__get_input_data` (or `{:json, text}` from
  `encode_args/1`, which is that text already).

  `args` may hold maps (string, atom or integer keys), lists, UTF-8
  binaries, integers, floats, booleans, `nil` and other atoms (as strings).
  The function's JSON response comes back as maps with string keys, lists,
  binaries, numbers, booleans and `nil`.

  Options:

    * `:timeout` - milliseconds for the whole call, host calls included
      (default: the `:invoke_timeout_ms` setting, 30 000; see `Worker.Config`);
    * `:max_memory` - bytes of linear memory (default
      the `:max_memory_bytes` setting, 128 MiB), never more than the
      worker-wide cap `FL_MEMORY_CAP_MB`;
    * `:http_allow` - hosts (`"host"` or `"host:port"`, IPv6 in brackets)
      the function may reach even though their addresses are not public
      (default: the `:http_allow` setting, from `FL_HTTP_ALLOW`). Public
      addresses are always allowed; loopback, private, link-local,
      unique-local, multicast and unspecified ones only when allow-listed.
      Names are checked on their resolved addresses, and so is every
      redirect;
    * `:metadata` - keyword list added to the Logger metadata of the lines
      the function logs, for example `[fl_module: "m", fl_function: "f"]`;
    * `:log_lines_per_s` - log lines a second that all invocations of this
      module may write together; the rest are dropped and counted. The
      module's budget is made by its first invocation, with that
      invocation's rate (default: the `:log_lines_per_s` setting,
      `FL_LOG_LINES_PER_S`, 1 000; 0 for no limit);
    * `:caller` - a process the invocation serves: if it dies, the
      invocation stops within a time slice and returns
      `{:error, :cancelled}`.

  A bad option raises `ArgumentError`, an allow-list entry that does not
  parse included.

  Results, for a FunLess module (a WASI command's and a component's are in
  the README's "Writing a function": its output, or an HTTP component's
  response body, decoded as `{:ok, term}`; a non-zero exit as
  `{:exec_error, "exited with status N: ..."}` and a non-2xx response as
  `{:exec_error, "status N: ..."}`; a trap with the end of stderr; output
  that is not UTF-8 as `{:invalid_response, _}`; and no output as
  `:no_response`):

    * `{:ok, term}` - `__invoke` returned 0 after `__insert_response`;
    * `{:error, {:exec_error, message}}` - it returned 1; `message` is the
      text given to `__insert_error`;
    * `{:error, {:trap, message}}` - a Wasm trap (including stack
      exhaustion), or a host import refusing a pointer or length outside
      memory or over a size cap;
    * `{:error, :timeout}` - the deadline passed;
    * `{:error, {:invalid_args, reason}}` - `args` cannot be JSON, or is
      larger than the input cap (4 MiB);
    * `{:error, :cancelled}` - the `:caller` died;
    * `{:error, {:invalid_response, reason}}` - the response is not JSON;
    * `{:error, :no_response}` - it returned 0 without a response;
    * `{:error, {:bad_return, code}}` - it returned neither 0 nor 1;
    * `{:error, {:exit, code}}` - it called WASI `proc_exit`;
    * `{:error, {:instantiate, reason}}` - no instance could be made (for
      example, the pool of instances is exhausted);
    * `{:error, {:panic, reason}}` - a bug in the worker; the runtime stays
      usable;
    * `{:error, {:runtime_unavailable, reason}}` - the runtime has no
      settings yet, or could not start.
  """
  @spec invoke(Module.t(), term() | {:json, binary()}, keyword()) ::
          {:ok, term()} | {:error, invoke_error()}
  def invoke(module, args, opts \\ []) do
    {result, _stats} = invoke_with_stats(module, args, opts)
    result
  end

  @doc """
  `invoke/3`, with what the invocation did besides its result: log lines
  dropped, outbound HTTP requests by outcome (`t:Worker.Runtime.Stats.t/0`).
  Takes the same options.
  """
  @spec invoke_with_stats(Module.t(), term() | {:json, binary()}, keyword()) ::
          {{:ok, term()} | {:error, invoke_error()}, Stats.t()}
  def invoke_with_stats(%Module{ref: ref}, args, opts \\ []) do
    {default_timeout, default_memory, default_allow, default_rate} =
      Worker.Config.invoke_defaults()

    timeout = Keyword.get(opts, :timeout, default_timeout)
    max_memory = Keyword.get(opts, :max_memory, default_memory)
    metadata = Keyword.get(opts, :metadata, [])
    http_allow = Keyword.get(opts, :http_allow, default_allow)
    caller = Keyword.get(opts, :caller)
    log_rate = Keyword.get(opts, :log_lines_per_s, default_rate)

    unless is_integer(timeout) and timeout in 0..@max_timeout do
      raise ArgumentError, ":timeout must be an integer of milliseconds up to #{@max_timeout}"
    end

    unless is_integer(max_memory) and max_memory >= 0 do
      raise ArgumentError, ":max_memory must be a non-negative integer of bytes"
    end

    unless is_list(http_allow) and Enum.all?(http_allow, &is_binary/1) do
      raise ArgumentError, ":http_allow must be a list of \"host\" or \"host:port\" strings"
    end

    unless Keyword.keyword?(metadata) do
      raise ArgumentError, ":metadata must be a keyword list"
    end

    unless is_nil(caller) or is_pid(caller) do
      raise ArgumentError, ":caller must be a pid"
    end

    unless is_integer(log_rate) and log_rate in 0..4_294_967_295 do
      raise ArgumentError, ":log_lines_per_s must be a non-negative integer"
    end

    loop = %{
      deadline: System.monotonic_time(:millisecond) + timeout,
      metadata: metadata,
      resume: &Native.invocation_resume/1,
      caller: caller,
      watch: nil
    }

    {reply, loop} = start(ref, args, {timeout, max_memory, http_allow, log_rate}, loop)
    drive(reply, loop)
  end

  # Arguments too large to encode on a normal scheduler come back as
  # :dirty; they are encoded on a dirty one, then the invocation starts.
  # Large arguments start on a dirty scheduler: copying them in, and the
  # first slice, in which the guest copies them into its memory, are not a
  # normal scheduler's work. The slices after run on a normal one, as any
  # (one that runs long moves the rest back to dirty ones).
  defp start(ref, {:json, text}, limits, loop) when byte_size(text) > @dirty_input_bytes,
    do: {Native.invocation_start_dirty(ref, text, limits), loop}

  defp start(ref, {:json, text}, limits, loop) when is_binary(text),
    do: {Native.invocation_start(ref, text, true, limits), loop}

  defp start(ref, args, limits, loop) do
    case Native.invocation_start(ref, args, false, limits) do
      :dirty ->
        case Native.args_encode_dirty(args) do
          {:ok, text} -> start(ref, {:json, text}, limits, loop)
          {:error, _} = error -> {{:done, error, [], nil}, loop}
        end

      reply ->
        {reply, loop}
    end
  end

  @doc """
  Checks an `:http_allow` list as `invoke/3` would, without invoking:
  `:ok`, or `{:error, reason}` for an entry that does not parse (which
  `invoke/3` raises as an `ArgumentError`).
  """
  @spec check_http_allow([String.t()]) :: :ok | {:error, String.t()}
  def check_http_allow(entries) do
    if is_list(entries) and Enum.all?(entries, &is_binary/1) do
      with {:error, {:invalid_option, reason}} <- Native.invocation_check_allow(entries),
           do: {:error, reason}
    else
      {:error, ":http_allow must be a list of \"host\" or \"host:port\" strings"}
    end
  end

  @doc """
  The JSON text `invoke/3` would give the function for `args`, as
  `{:json, text}`, which `invoke/3` also takes: arguments kept this way are
  one binary, compact and shared between processes without a copy. Large
  arguments are encoded on a dirty scheduler; the walk stops at the input
  cap (4 MiB), however large the term.
  """
  @spec encode_args(term()) :: {:ok, {:json, binary()}} | {:error, {:invalid_args, String.t()}}
  def encode_args(args) do
    result =
      case Native.args_encode(args) do
        :dirty -> Native.args_encode_dirty(args)
        result -> result
      end

    with {:ok, text} <- result, do: {:ok, {:json, text}}
  end

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

  @no_stats %Stats{}

  # The loop over the NIF's replies. Every call into the NIF returns within
  # about one time slice.
  defp drive({:done, result, lines, stats}, loop) do
    emit(lines, loop)
    if loop.watch, do: Process.demonitor(loop.watch, [:flush])
    finish(result, stats, loop)
  end

  defp drive({:yield, invocation, lines}, loop) do
    emit(lines, loop)
    loop = watch(loop)

    if abandoned?(loop) do
      {cancel(invocation, nil, loop, {:error, :cancelled}), @no_stats}
    else
      invocation |> loop.resume.() |> drive(loop)
    end
  end

  # A slice ran long (a long host call, a huge bulk memory operation): the
  # rest of the invocation runs on dirty schedulers.
  defp drive({:yield_dirty, invocation, lines}, loop) do
    drive({:yield, invocation, lines}, %{loop | resume: &Native.invocation_resume_dirty/1})
  end

  defp drive({:wait, invocation, id, lines}, loop) do
    emit(lines, loop)
    loop = watch(loop)

    case await_wake(invocation, id, loop) do
      :woken -> invocation |> loop.resume.() |> drive(loop)
      stopped -> {stopped, @no_stats}
    end
  end

  defp drive({:decode, invocation, lines, stats}, loop) do
    emit(lines, loop)
    if loop.watch, do: Process.demonitor(loop.watch, [:flush])
    finish(Native.invocation_decode(invocation), stats, loop)
  end

  # The one place an error from the NIF becomes an exception: an option
  # the runtime could not use.
  defp finish({:error, {:invalid_option, reason}}, _stats, _loop),
    do: raise(ArgumentError, reason)

  defp finish(result, nil, _loop), do: {result, @no_stats}

  defp finish(result, %Stats{dropped_lines: dropped} = stats, loop) do
    if dropped > 0 do
      Logger.warning(
        "function output: #{dropped} lines over the log caps were dropped",
        [fl_stream: :host] ++ loop.metadata
      )
    end

    {result, stats}
  end

  # With a :caller, an invocation that outlives its first slice watches it.
  defp watch(%{caller: caller, watch: nil} = loop) when is_pid(caller),
    do: %{loop | watch: Process.monitor(caller)}

  defp watch(loop), do: loop

  defp abandoned?(%{watch: nil}), do: false

  defp abandoned?(%{watch: watch}) do
    receive do
      {:DOWN, ^watch, _, _, _} -> true
    after
      0 -> false
    end
  end

  # The guest waits on I/O (or a timer): block in receive until the runtime
  # wakes us. The runtime enforces the deadline itself, host calls included;
  # the margin here only matters if it somehow fails to wake us.
  defp await_wake(invocation, id, loop) do
    left = max(loop.deadline - System.monotonic_time(:millisecond), 0) + 1_000
    watch = loop.watch

    receive do
      {:"$fl_wake", ^id} ->
        :woken

      {:DOWN, ^watch, _, _, _} ->
        cancel(invocation, id, %{loop | watch: nil}, {:error, :cancelled})
    after
      left -> cancel(invocation, id, loop, {:error, :timeout})
    end
  end

  # Drops the invocation. One that was waiting may have a wake message on
  # its way (`:wake_pending`): it is flushed, so it never reaches whatever
  # this process does next.
  defp cancel(invocation, wake_id, loop, result) do
    if Native.invocation_cancel(invocation) == :wake_pending and wake_id do
      receive do
        {:"$fl_wake", ^wake_id} -> :ok
      after
        5_000 -> :ok
      end
    end

    if loop.watch, do: Process.demonitor(loop.watch, [:flush])
    result
  end

  defp emit([], _loop), do: :ok

  defp emit(lines, loop) do
    Enum.each(lines, fn {stream, text} ->
      Logger.log(level(stream), text, [fl_stream: stream] ++ loop.metadata)
    end)
  end

  defp level(:console), do: :info
  defp level(:stdout), do: :info
  defp level(:stderr), do: :warning
  defp level(:host), do: :warning
end
