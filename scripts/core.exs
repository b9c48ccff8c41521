# A stand-in FunLess Core: stores a function on a worker node and invokes it,
# over Erlang distribution, with the messages a real Core sends.
#
#   elixir --name core@127.0.0.1 --cookie COOKIE scripts/core.exs WORKER_NODE PATH.wasm [JSON]
#
# The JSON arguments are decoded on the worker (Worker.JSON), since this
# script runs without the worker's code.

[worker, path | rest] = System.argv()
worker = String.to_atom(worker)
json = List.first(rest) || ~s({"name": "FunLess"})

unless Node.connect(worker) == true do
  IO.puts(:stderr, "cannot connect to #{worker}")
  System.halt(1)
end

code = File.read!(path)
name = Path.basename(path, ".wasm")
fun = %{name: name, module: "examples", hash: :crypto.hash(:sha3_256, code), code: code}
{:ok, args} = :erpc.call(worker, Worker.JSON, :decode, [json])

call = fn msg -> GenServer.call({:worker, worker}, msg, 60_000) end

IO.puts("core: get_info         -> #{inspect(call.(:get_info))}")
IO.puts("core: store_function   -> #{inspect(call.({:store_function, fun}))}")

{micros, result} = :timer.tc(fn -> call.({:invoke, Map.delete(fun, :code), args}) end)
IO.puts("core: invoke #{name} #{json} -> #{inspect(result)} (#{micros} us)")

{micros, _} = :timer.tc(fn -> call.({:invoke, Map.delete(fun, :code), args}) end)
IO.puts("core: invoke again, warm -> #{micros} us")

case result do
  {:ok, _} -> :ok
  _ -> System.halt(1)
end
