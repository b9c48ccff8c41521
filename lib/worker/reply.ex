defmodule Worker.Reply do
  @moduledoc """
  The error replies of the Core protocol, each built here, once: their
  shapes are part of the protocol (docs/protocol.md).

  | reply | when |
  |---|---|
  | `{:error, {:bad_request, reason}}` | a request, or what it carries, is not what the protocol says |
  | `{:error, :overloaded}` | a bound of the node, or a function's share of it, is full (counted, see `overloaded/2`) |
  | `{:error, :timeout}` | the request's deadline passed (`Worker.Request.deadline/1`) |
  | `{:error, {:insufficient_capacity, reason}}` | the Core's `capacity` cannot hold the function |
  | `{:error, {:internal, reason}}` | a bug while serving the request; nothing else is affected |

  An invocation's own failures (`{:exec_error, _}`, `{:trap, _}`, ...) are
  the runtime's (`Worker.Runtime`), passed on as they are.
  """

  require Logger

  # The bounds a request can find full; each counts its refusals.
  @bounds [requests: 1, handler_bytes: 2, admission: 3]

  @names %{
    requests: "the requests being served (FL_MAX_REQUESTS)",
    handler_bytes: "the arguments code handlers hold (FL_HANDLER_MAX_MB)",
    admission: "the invocations running and queued (FL_MAX_CONCURRENCY, FL_QUEUE_LIMIT)"
  }

  @type bound :: :requests | :handler_bytes | :admission

  @doc false
  # The counters outlive restarts of every process: made once per VM.
  def init do
    unless :persistent_term.get({__MODULE__, :overloaded}, nil) do
      :persistent_term.put({__MODULE__, :overloaded}, :counters.new(3, [:write_concurrency]))
      # when a refusal of a function over its share was last logged: long
      # enough ago (monotonic time may be negative, so not 0)
      warned = :atomics.new(1, signed: true)
      :atomics.put(warned, 1, System.monotonic_time(:millisecond) - 1_000)
      :persistent_term.put({__MODULE__, :warned}, warned)
    end

    :ok
  end

  @doc "`{:error, {:bad_request, reason}}`."
  @spec bad_request(String.t()) :: {:error, {:bad_request, String.t()}}
  def bad_request(reason), do: {:error, {:bad_request, reason}}

  @doc "`{:error, :timeout}`."
  @spec timeout() :: {:error, :timeout}
  def timeout, do: {:error, :timeout}

  @doc "`{:error, {:insufficient_capacity, reason}}`."
  @spec insufficient_capacity(String.t()) :: {:error, {:insufficient_capacity, String.t()}}
  def insufficient_capacity(reason), do: {:error, {:insufficient_capacity, reason}}

  @doc "`{:error, {:internal, reason}}` for a raise, throw or exit."
  @spec internal(:error | :exit | :throw, term()) :: {:error, {:internal, String.t()}}
  def internal(kind, reason), do: {:error, {:internal, Exception.format_banner(kind, reason)}}

  @doc """
  `{:error, :overloaded}`, counted against `bound`. For a function held to
  its share of the bound (`FL_FUNCTION_SHARE`), `function_id` names it in
  a warning, logged at most once a second however many are refused.
  """
  @spec overloaded(bound(), Worker.Function.id() | nil) :: {:error, :overloaded}
  def overloaded(bound, function_id \\ nil) do
    :counters.add(:persistent_term.get({__MODULE__, :overloaded}), @bounds[bound], 1)
    if function_id, do: warn_share(function_id, bound)
    {:error, :overloaded}
  end

  @doc "Requests refused with `:overloaded` so far, by bound."
  @spec overloaded_counts() :: %{bound() => non_neg_integer()}
  def overloaded_counts do
    counters = :persistent_term.get({__MODULE__, :overloaded})
    Map.new(@bounds, fn {bound, index} -> {bound, :counters.get(counters, index)} end)
  end

  defp warn_share({module, name}, bound) do
    warned = :persistent_term.get({__MODULE__, :warned})
    now = System.monotonic_time(:millisecond)
    last = :atomics.get(warned, 1)

    if now - last >= 1_000 and :atomics.compare_exchange(warned, 1, last, now) == :ok do
      Logger.warning(
        "#{inspect(module)}/#{inspect(name)} holds its share (FL_FUNCTION_SHARE) of " <>
          "#{@names[bound]}; refusing more of it with :overloaded"
      )
    end
  end
end
