defmodule Worker.CodeHandler do
  @moduledoc """
  Waits for the code of a function this worker does not have.

  When an invocation finds no code, the worker replies
  `{:error, :code_not_found, handler_pid}`; the Core then calls the handler
  with `{:invoke, function_with_code}`. The handler stores the code, runs
  the function with the arguments of the original request, and replies as
  an invocation does. It goes away after answering, or after
  `FL_HANDLER_TIMEOUT_MS` without a call.
  """
  use GenServer, restart: :temporary

  @doc "Starts a handler holding `args`."
  @spec start(term()) :: {:ok, pid()}
  def start(args) do
    DynamicSupervisor.start_child(Worker.Handlers, {__MODULE__, args})
  end

  def start_link(args), do: GenServer.start_link(__MODULE__, args)

  @impl true
  def init(args) do
    {:ok, args, Application.fetch_env!(:worker, :handler_timeout_ms)}
  end

  @impl true
  def handle_call({:invoke, function}, _from, args) do
    result = Worker.Server.safely(fn -> Worker.Server.invoke_with_code(function, args) end)
    {:stop, :normal, result, args}
  end

  def handle_call(_other, _from, args) do
    {:reply, {:error, {:bad_request, "expected {:invoke, function_with_code}"}}, args,
     Application.fetch_env!(:worker, :handler_timeout_ms)}
  end

  @impl true
  def handle_info(:timeout, args), do: {:stop, :normal, args}
end
