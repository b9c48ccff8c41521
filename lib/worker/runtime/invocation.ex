defmodule Worker.Runtime.Invocation do
  @moduledoc """
  Invoking a compiled function: `invoke/3` runs it in the calling process,
  in slices of about one epoch tick, over the native invocation
  (`native/worker_nif/src/invocation.rs`, over `worker_runtime`'s
  `invocation.rs`). Each call into the NIF returns within a slice; between
  them this loop emits the function's log lines, resumes it, waits for
  the runtime to wake it while it waits on I/O, or gives up when its
  `:caller` dies. `Worker.Runtime` delegates to it.

  The defaults of the options are this module's (`defaults/0`); the worker
  sets them from its configuration (`put_defaults/1`).
  """

  alias Worker.Native
  alias Worker.Runtime.{Module, Stats}

  require Logger

  # `receive ... after` takes at most 2^32 - 1 ms; keep room for the margin.
  @max_timeout 4_294_000_000
  @max_log_lines_per_s 4_294_967_295
  # arguments (as JSON text) above this run their invocation on dirty
  # schedulers (see start/4)
  @dirty_input_bytes 256 * 1024
  # {timeout, max_memory, http_allow, log_lines_per_s}
  @builtin {30_000, 128 * 1024 * 1024, [], 1_000}

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

  @doc "The longest `:timeout`, in milliseconds."
  @spec max_timeout() :: pos_integer()
  def max_timeout, do: @max_timeout

  @doc "The highest `:log_lines_per_s`."
  @spec max_log_lines_per_s() :: pos_integer()
  def max_log_lines_per_s, do: @max_log_lines_per_s

  @doc """
  The defaults of `:timeout`, `:max_memory`, `:http_allow` and
  `:log_lines_per_s`, as a keyword list: 30 000 ms, 128 MiB, none and
  1 000 lines a second, until `put_defaults/1` changes them.
  """
  @spec defaults() :: keyword()
  def defaults do
    {timeout, max_memory, http_allow, log_rate} = current()
    [timeout: timeout, max_memory: max_memory, http_allow: http_allow, log_lines_per_s: log_rate]
  end

  @doc "The default of one option: see `defaults/0`."
  @spec default(:timeout | :max_memory | :http_allow | :log_lines_per_s) :: term()
  def default(:timeout), do: elem(current(), 0)
  def default(:max_memory), do: elem(current(), 1)
  def default(:http_allow), do: elem(current(), 2)
  def default(:log_lines_per_s), do: elem(current(), 3)

  # read on every invocation: one :persistent_term lookup
  defp current, do: :persistent_term.get({__MODULE__, :defaults}, @builtin)

  @doc """
  Changes the defaults of the options it names (`:timeout`, `:max_memory`,
  `:http_allow`, `:log_lines_per_s`) for every later invocation in this
  VM. Raises `ArgumentError` for a value `invoke/3` would refuse.
  """
  @spec put_defaults(keyword()) :: :ok
  def put_defaults(opts) do
    old = defaults()

    {timeout, max_memory, http_allow, log_rate} =
      for key <- [:timeout, :max_memory, :http_allow, :log_lines_per_s] do
        value = Keyword.get(opts, key, old[key])
        check!(key, value)
        value
      end
      |> List.to_tuple()

    if key = Enum.find(Keyword.keys(opts), &(not Keyword.has_key?(old, &1))) do
      raise ArgumentError, "no default for #{inspect(key)}"
    end

    if http_allow != old[:http_allow] do
      with {:error, reason} <- check_http_allow(http_allow), do: raise(ArgumentError, reason)
    end

    new = {timeout, max_memory, http_allow, log_rate}
    if current() != new, do: :persistent_term.put({__MODULE__, :defaults}, new)
    :ok
  end

  defp check!(:timeout, timeout) do
    unless is_integer(timeout) and timeout in 0..@max_timeout do
      raise ArgumentError, ":timeout must be an integer of milliseconds up to #{@max_timeout}"
    end
  end

  defp check!(:max_memory, max_memory) do
    unless is_integer(max_memory) and max_memory >= 0 do
      raise ArgumentError, ":max_memory must be a non-negative integer of bytes"
    end
  end

  defp check!(:http_allow, http_allow) do
    unless is_list(http_allow) and Enum.all?(http_allow, &is_binary/1) do
      raise ArgumentError, ":http_allow must be a list of \"host\" or \"host:port\" strings"
    end
  end

  defp check!(:log_lines_per_s, log_rate) do
    unless is_integer(log_rate) and log_rate in 0..@max_log_lines_per_s do
      raise ArgumentError, ":log_lines_per_s must be an integer from 0 to #{@max_log_lines_per_s}"
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
      (default: 30 000, or as `put_defaults/1` set it: the worker's
      `FL_INVOKE_TIMEOUT_MS`);
    * `:max_memory` - bytes of linear memory (default 128 MiB, or
      `FL_MAX_MEMORY_MB`), never more than the runtime's cap
      (`FL_MEMORY_CAP_MB`);
    * `:http_allow` - hosts (`"host"` or `"host:port"`, IPv6 in brackets)
      the function may reach even though their addresses are not public
      (default: none, or `FL_HTTP_ALLOW`). Public
      addresses are always allowed; loopback, private, link-local,
      unique-local, multicast and unspecified ones only when allow-listed.
      Names are checked on their resolved addresses, and so is every
      redirect;
    * `:metadata` - keyword list added to the Logger metadata of the lines
      the function logs, for example `[fl_module: "m", fl_function: "f"]`;
    * `:log_lines_per_s` - log lines a second that all invocations of this
      module may write together; the rest are dropped and counted. The
      module's budget is made by its first invocation, with that
      invocation's rate (default: 1 000, or `FL_LOG_LINES_PER_S`; 0 for
      no limit);
    * `:caller` - a process the invocation serves: if it dies, the
      invocation stops within a time slice and returns
      `{:error, :cancelled}`.

  A bad option raises `ArgumentError`, an allow-list entry that does not
  parse included.

  Results, for a FunLess module (a WASI command's and a component's are in
  docs/functions.md: its output, or an HTTP component's
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
    {default_timeout, default_memory, default_allow, default_rate} = current()

    timeout = Keyword.get(opts, :timeout, default_timeout)
    max_memory = Keyword.get(opts, :max_memory, default_memory)
    metadata = Keyword.get(opts, :metadata, [])
    http_allow = Keyword.get(opts, :http_allow, default_allow)
    caller = Keyword.get(opts, :caller)
    log_rate = Keyword.get(opts, :log_lines_per_s, default_rate)

    check!(:timeout, timeout)
    check!(:max_memory, max_memory)
    check!(:http_allow, http_allow)
    check!(:log_lines_per_s, log_rate)

    unless Keyword.keyword?(metadata) do
      raise ArgumentError, ":metadata must be a keyword list"
    end

    unless is_nil(caller) or is_pid(caller) do
      raise ArgumentError, ":caller must be a pid"
    end

    loop = %{
      deadline: System.monotonic_time(:millisecond) + timeout,
      metadata: metadata,
      resume: &Native.invocation_resume/1,
      caller: caller,
      watch: nil
    }

    drive(start(ref, args, {timeout, max_memory, http_allow, log_rate}), loop)
  end

  # Large arguments start on a dirty scheduler: copying them in, and the
  # first slice, in which the guest copies them into its memory, are not a
  # normal scheduler's work. Arguments too large to encode on a normal
  # scheduler come back as :dirty and are encoded on a dirty one first. The
  # slices after run on a normal scheduler, as any (one that runs long moves
  # the rest back to dirty ones).
  defp start(ref, {:json, text}, limits) when byte_size(text) > @dirty_input_bytes,
    do: Native.invocation_start_dirty(ref, text, limits)

  defp start(ref, {:json, text}, limits) when is_binary(text),
    do: Native.invocation_start(ref, text, true, limits)

  defp start(ref, args, limits) do
    case Native.invocation_start(ref, args, false, limits) do
      :dirty ->
        case Native.args_encode_dirty(args) do
          {:ok, text} -> start(ref, {:json, text}, limits)
          {:error, _} = error -> {:done, error, [], nil}
        end

      reply ->
        reply
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
