defmodule Worker.Test.Core do
  @moduledoc """
  A stand-in FunLess Core on the test node: the messages it sends a worker
  node, and the function descriptions it sends with them (plain maps with
  the keys of the Core's `%Data.FunctionStruct{}`).
  """

  @timeout 60_000

  @doc "A call to `:worker` on `node`, as the Core makes it."
  def call(node, message, timeout \\ @timeout),
    do: GenServer.call({:worker, node}, message, timeout)

  @doc """
  A function description carrying `wasm`. Options: `:module` (default
  `"examples"`), `:code` (false: leave the code out), `:capacity` (the
  Core's `metadata.capacity`, in bytes).
  """
  def function(name, wasm, opts \\ []) do
    function = %{
      name: name,
      module: Keyword.get(opts, :module, "examples"),
      hash: :crypto.hash(:sha3_256, wasm),
      code: if(Keyword.get(opts, :code, true), do: wasm)
    }

    case Keyword.fetch(opts, :capacity) do
      {:ok, bytes} -> Map.put(function, :metadata, %{tag: "default", capacity: bytes})
      :error -> function
    end
  end

  @doc "What the worker knows a function by: `{module, name, hash}`."
  def key(function), do: {function.module, function.name, function.hash}

  @doc "The description without its code, as the Core sends it to invoke."
  def without_code(function), do: %{function | code: nil}

  @doc "Invokes `function` (without its code) with `args`."
  def invoke(node, function, args), do: call(node, {:invoke, without_code(function), args})

  @doc "A call into the worker node's own modules, outside the protocol."
  def remote(node, m, f, a), do: :erpc.call(node, m, f, a)

  @doc """
  Run on a node of its own (another Core, whose link to the worker nothing
  else uses): invokes `function` on `node` every `interval` ms until sent
  `{:stop, pid}`, then sends `pid` `{:probed, [{at, latency_us, result}]}`,
  `at` the call's start in `System.os_time(:microsecond)` (one clock for
  every node of the machine).
  """
  def probe(node, function, interval) do
    probe(node, without_code(function), interval, [])
  end

  defp probe(node, function, interval, acc) do
    at = System.os_time(:microsecond)
    started = System.monotonic_time(:microsecond)
    result = call(node, {:invoke, function, %{"name" => "probe"}})
    acc = [{at, System.monotonic_time(:microsecond) - started, result} | acc]

    receive do
      {:stop, pid} -> send(pid, {:probed, Enum.reverse(acc)})
    after
      interval -> probe(node, function, interval, acc)
    end
  end
end
