defmodule Worker.NodeInfo do
  @moduledoc """
  The worker's long name and tag, as the Core reads and sets them.

  Both are persisted in the data directory. Until set, the long name is
  `FL_WORKER_NAME` (otherwise the node name) and the tag `FL_WORKER_TAG`
  (otherwise the long name). A new value must be UTF-8 text of 1 to
  #{255} bytes with no control characters; anything else is refused with
  `{:error, {:bad_request, reason}}` and the previous value stays.
  """
  use GenServer

  alias Worker.{Store, Stray}

  @file_name "node_info"
  @max_bytes 255

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc "`{long_name, tag}`: a read that never waits on a write."
  @spec get() :: {String.t(), String.t()}
  def get, do: :persistent_term.get(__MODULE__)

  @doc """
  Sets the long name, the tag, or both (`nil` keeps a value); persists them.
  `{:error, :timeout}` when that is not done by `deadline`
  (`Worker.Request.deadline/1`); they are set all the same.
  """
  @spec set(String.t() | nil, String.t() | nil, Worker.Request.deadline()) ::
          {:ok, {String.t(), String.t()}} | {:error, term()}
  def set(long_name, tag, deadline \\ :infinity) do
    with :ok <- check(long_name, "long name"), :ok <- check(tag, "tag") do
      server = :persistent_term.get({__MODULE__, :server})
      GenServer.call(server, {:set, long_name, tag}, Worker.Request.time_left(deadline))
    end
  catch
    :exit, {:timeout, _} -> Worker.Reply.timeout()
  end

  defp check(nil, _what), do: :ok

  defp check(value, what) when is_binary(value) and byte_size(value) in 1..@max_bytes do
    if String.valid?(value) and not String.match?(value, ~r/[[:cntrl:]]/u) do
      :ok
    else
      Worker.Reply.bad_request("the #{what} must be UTF-8 text without control characters")
    end
  end

  defp check(_value, what),
    do: Worker.Reply.bad_request("the #{what} must be UTF-8 text of 1 to #{@max_bytes} bytes")

  @impl true
  def init(_opts) do
    :persistent_term.put({__MODULE__, :server}, self())
    {:ok, publish(initial())}
  end

  @impl true
  def handle_call({:set, long_name, tag}, _from, {old_name, old_tag} = old) do
    new = {long_name || old_name, tag || old_tag}

    case Store.put_term(@file_name, new) do
      :ok -> {:reply, {:ok, new}, publish(new)}
      error -> {:reply, error, old}
    end
  end

  def handle_call(request, _from, state), do: Stray.call(__MODULE__, request, state)

  @impl true
  def handle_cast(request, state), do: Stray.cast(__MODULE__, request, state)

  @impl true
  def handle_info(message, state), do: Stray.info(__MODULE__, message, state)

  defp publish(info) do
    if :persistent_term.get(__MODULE__, nil) != info, do: :persistent_term.put(__MODULE__, info)
    info
  end

  defp initial do
    case Store.get_term(@file_name) do
      {:ok, {name, tag}} when is_binary(name) and is_binary(tag) ->
        {name, tag}

      _ ->
        name = Application.get_env(:worker, :worker_name) || Atom.to_string(node())
        {name, Application.get_env(:worker, :worker_tag) || name}
    end
  end
end
