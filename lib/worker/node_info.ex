defmodule Worker.NodeInfo do
  @moduledoc """
  The worker's long name and tag, as the Core reads and sets them.

  Both are persisted in the data directory. Until set, the long name is
  `FL_WORKER_NAME` (otherwise the node name) and the tag `FL_WORKER_TAG`
  (otherwise the long name).
  """
  use Agent

  alias Worker.Store

  @file_name "node_info"

  def start_link(_opts) do
    Agent.start_link(fn -> publish(initial()) end, name: __MODULE__)
  end

  @doc "`{long_name, tag}`: a read that never waits on a write."
  @spec get() :: {String.t(), String.t()}
  def get, do: :persistent_term.get(__MODULE__)

  defp publish(info) do
    :persistent_term.put(__MODULE__, info)
    info
  end

  @doc "Sets the long name, the tag, or both (`nil` keeps a value); persists them."
  @spec set(String.t() | nil, String.t() | nil) ::
          {:ok, {String.t(), String.t()}} | {:error, term()}
  def set(long_name, tag) do
    Agent.get_and_update(__MODULE__, fn {old_name, old_tag} = old ->
      new = {long_name || old_name, tag || old_tag}

      case Store.put_term(@file_name, new) do
        :ok -> {{:ok, new}, publish(new)}
        error -> {error, old}
      end
    end)
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
