defmodule Worker.Stray do
  @moduledoc """
  Messages that no process of the worker asked for: an unknown request, a
  cast, a call with a malformed reply address, a system message. They are
  dropped, counted (`worker_stray_messages_total`), and logged, at most
  #{10} lines a second over the whole node, so that a flood of them cannot
  flood the log too.
  """

  require Logger

  @per_second 10
  @total 1
  @second 2
  @logged 3

  @doc false
  def init do
    unless :persistent_term.get(__MODULE__, nil) do
      :persistent_term.put(__MODULE__, :atomics.new(3, signed: true))
    end

    :ok
  end

  @doc "Drops `message`, which reached `where`; counts it and maybe logs it."
  @spec drop(String.t(), term()) :: :ok
  def drop(where, message) do
    atomics = :persistent_term.get(__MODULE__)
    :atomics.add(atomics, @total, 1)
    now = System.monotonic_time(:second)

    if :atomics.exchange(atomics, @second, now) != now do
      :atomics.put(atomics, @logged, 0)
    end

    case :atomics.add_get(atomics, @logged, 1) do
      n when n <= @per_second ->
        Logger.warning(
          "#{where}: dropped an unexpected message: #{inspect(message, limit: 8, printable_limit: 200)}"
        )

      n when n == @per_second + 1 ->
        Logger.warning("#{where}: more unexpected messages this second; not logging them")

      _ ->
        :ok
    end

    :ok
  end

  @doc """
  The catch-all clauses of the worker's GenServers, one line each:
  `def handle_call(request, _from, state), do: Stray.call(__MODULE__, request, state)`
  (and `cast/3`, `info/3`). A stray call is answered
  `{:error, {:bad_request, "unknown request"}}`.
  """
  @spec call(module(), term(), state) :: {:reply, {:error, {:bad_request, String.t()}}, state}
        when state: term()
  def call(module, request, state) do
    drop(inspect(module), request)
    {:reply, Worker.Reply.bad_request("unknown request"), state}
  end

  @doc "See `call/3`."
  @spec cast(module(), term(), state) :: {:noreply, state} when state: term()
  def cast(module, request, state) do
    drop(inspect(module), request)
    {:noreply, state}
  end

  @doc "See `call/3`."
  @spec info(module(), term(), state) :: {:noreply, state} when state: term()
  def info(module, message, state), do: cast(module, message, state)

  @doc "Stray messages so far."
  @spec count() :: non_neg_integer()
  def count, do: :atomics.get(:persistent_term.get(__MODULE__), @total)
end
