defmodule Worker.Server do
  @moduledoc """
  The process registered as `:worker`, which answers the FunLess Core.

  | request | reply |
  |---|---|
  | `{:invoke, function, args}` | `{:ok, result}`, `{:error, {:exec_error, msg}}`, `{:error, reason}`, or `{:error, :code_not_found, handler_pid}` |
  | `{:invoke, function_with_code}` | as above (args `%{}`); to a handler, with the original args |
  | `{:store_function, function_with_code}` | `:ok` or `{:error, reason}` |
  | `{:update_function, prev_hash, function_with_code}` | `:ok` or `{:error, reason}` |
  | `{:delete_function, name, module, hash}` | `:ok` (or `{:error, :timeout}`, see below) |
  | `:get_info` | `{:ok, long_name, tag}` |
  | `{:set_long_name, name}`, `{:set_tag, tag}` | `{:ok, long_name, tag}` or `{:error, {:bad_request, reason}}` |

  Any request but `:get_info` may also get `{:error, :overloaded}` (a bound, or the
  function's share of it, is full) or `{:error, :timeout}` (its deadline,
  `Worker.Request.deadline/1`, passed).

  It only dispatches. `Worker.Request` reads each request into a job,
  checking everything it carries (a bad one is answered at once), and
  gives it the deadline of its reply.
  `:get_info` is answered here, from memory. Every other job gets a
  process of its own (`Worker.Job.start/3`), which replies to the Core
  directly; `:worker` never waits on one. Jobs are bounded by the requests
  served at once (`FL_MAX_REQUESTS`), and those of one function by its
  share of them (`FL_FUNCTION_SHARE`); past either, the reply is
  `{:error, :overloaded}`.

  It is a plain process, not a `GenServer`: it must survive every message
  any node can send it. Casts, calls with a malformed reply address,
  system messages and anything else are dropped and counted
  (`Worker.Stray`). Unknown calls get `{:error, {:bad_request, _}}`.
  """

  alias Worker.{Job, NodeInfo, Request, Stray}

  @doc false
  def child_spec(opts),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}

  @doc false
  def start_link(_opts), do: :proc_lib.start_link(__MODULE__, :init, [])

  @doc false
  def init do
    # any node can message :worker: a backlog (a flood of casts, say) stays
    # off its heap, so collections never walk it
    Process.flag(:message_queue_data, :off_heap)
    true = Process.register(self(), :worker)
    :proc_lib.init_ack({:ok, self()})
    loop()
  end

  @doc false
  # Called fully qualified, so that a new version of this module, once
  # loaded, takes over at the next message.
  def loop do
    receive do
      {:"$gen_call", {pid, _tag} = from, request} when is_pid(pid) ->
        handle(request, from)

      message ->
        Stray.drop("Worker.Server", message)
    end

    __MODULE__.loop()
  end

  defp handle(request, from) do
    case Request.parse(request) do
      {:ok, :get_info} ->
        {name, tag} = NodeInfo.get()
        reply(from, {:ok, name, tag})

      {:ok, job} ->
        Job.start(from, job, Request.deadline(job))

      {:error, _} = refused ->
        reply(from, refused)

      :unknown ->
        Stray.drop("Worker.Server", request)
        reply(from, Worker.Reply.bad_request("unknown request"))
    end
  end

  defp reply(from, reply), do: GenServer.reply(from, reply)
end
