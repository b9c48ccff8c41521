defmodule Worker.Request do
  @moduledoc """
  The FunLess Core's requests to `:worker`, read into the jobs
  `Worker.Job` runs. Everything a request carries is checked here,
  once, before any process is spawned for it.

  | request | job |
  |---|---|
  | `:get_info` | `:get_info` |
  | `{:invoke, function, args}` | `{:invoke, function, input}` |
  | `{:invoke, function_with_code}` | `{:invoke, function, input}`, with args `%{}` |
  | `{:store_function, function_with_code}` | `{:store, function}` |
  | `{:update_function, prev_hash, function_with_code}` | `{:update, prev_hash, function}` |
  | `{:delete_function, name, module, hash}` | `{:delete, key}` |
  | `{:set_long_name, name}` | `{:set_node_info, name, nil}` |
  | `{:set_tag, tag}` | `{:set_node_info, nil, tag}` |

  `function` is a `Worker.Function`; `input` the arguments as JSON text,
  `{:json, text}` (`Worker.Runtime.encode_args/1`): encoded once, up to
  the input cap, so a huge term is refused at the door and the job holds
  one compact binary.

  Each job has a deadline (`deadline/1`), by which its reply is due: the
  Core gives up on a call after its own timeout, and its request with it.
  """

  alias Worker.{Function, Runtime}

  @type job ::
          :get_info
          | {:invoke, Function.t(), {:json, binary()}}
          | {:store, Function.t()}
          | {:update, binary(), Function.t()}
          | {:delete, Function.key()}
          | {:set_node_info, term(), term()}

  @typedoc "A request whose content is wrong: the Core gets `{:error, reason}`."
  @type refusal :: Function.refusal() | {:invalid_args, String.t()}

  @doc """
  The job for `request`; `{:error, reason}` for a known request with bad
  content; `:unknown` for anything else.
  """
  @spec parse(term()) :: {:ok, job()} | {:error, refusal()} | :unknown
  def parse(:get_info), do: {:ok, :get_info}

  def parse({:invoke, function, args}) do
    with {:ok, function} <- Function.parse(function),
         {:ok, input} <- Runtime.encode_args(args),
         do: {:ok, {:invoke, function, input}}
  end

  def parse({:invoke, function}) do
    with {:ok, function} <- Function.parse_with_code(function),
         do: {:ok, {:invoke, function, {:json, "{}"}}}
  end

  def parse({:store_function, function}) do
    with {:ok, function} <- Function.parse_with_code(function), do: {:ok, {:store, function}}
  end

  def parse({:update_function, prev_hash, function}) do
    with {:ok, function} <- Function.parse_with_code(function),
         true <- is_binary(prev_hash) || bad("prev_hash must be a binary"),
         do: {:ok, {:update, prev_hash, function}}
  end

  def parse({:delete_function, name, module, hash})
      when is_binary(name) and is_binary(module) and is_binary(hash),
      do: {:ok, {:delete, {module, name, hash}}}

  def parse({:delete_function, _, _, _}), do: bad("name, module and hash must be binaries")
  def parse({:set_long_name, name}), do: {:ok, {:set_node_info, name, nil}}
  def parse({:set_tag, tag}), do: {:ok, {:set_node_info, nil, tag}}
  def parse(_other), do: :unknown

  @doc """
  The function a job is for (`Worker.Function.id/1`), whose share of the
  worker's bounds it counts against; `nil` for a job for none.
  """
  @spec function_id(job()) :: Function.id() | nil
  def function_id({:invoke, function, _input}), do: Function.id(function)
  def function_id({:store, function}), do: Function.id(function)
  def function_id({:update, _prev_hash, function}), do: Function.id(function)
  def function_id({:delete, key}), do: Function.id(key)
  def function_id(_job), do: nil

  @typedoc "A deadline: a time of `System.monotonic_time(:millisecond)`, or `:infinity`."
  @type deadline :: integer() | :infinity

  @doc """
  The time by which the reply to `job`, read now, is due: an invocation's
  (or `:invoke`, for the call a code handler gets) after
  `FL_INVOKE_DEADLINE_MS`, any other's after `FL_STORE_DEADLINE_MS` (see
  `Worker.Config` for why they differ).
  """
  @spec deadline(job() | :invoke) :: deadline()
  def deadline({:invoke, _function, _input}), do: deadline(:invoke)
  def deadline(:invoke), do: from_now(:invoke_deadline_ms)
  def deadline(_job), do: from_now(:store_deadline_ms)

  defp from_now(setting),
    do: System.monotonic_time(:millisecond) + Application.fetch_env!(:worker, setting)

  @doc "Milliseconds left before `deadline` (0 once it passed), or `:infinity`."
  @spec time_left(deadline()) :: non_neg_integer() | :infinity
  def time_left(:infinity), do: :infinity
  def time_left(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  defp bad(reason), do: Worker.Reply.bad_request(reason)
end
