# The :worker path against Worker.Runtime.invoke/3 in one VM (hello):
# 10 blocks of 3,000 calls each, medians in µs, and their ratio. Run it in
# two trees in turn to compare commits (BENCHMARKS.md):
#
#     MIX_ENV=test FL_LOG_LEVEL=info mix run bench/ratio.exs
wasm = Path.join(Worker.MixCargo.release_dir("functions", "wasm32-wasip1"), "hello.wasm")
code = File.read!(wasm)
fun = %{name: "ratio_hello", module: "bench", hash: :crypto.hash(:sha256, code), code: code}
:ok = GenServer.call(:worker, {:store_function, fun})
function = Map.delete(fun, :code)
{:ok, module} = Worker.Runtime.compile(code)
args = %{"name" => "x"}
calls = 3_000

blocks =
  for _ <- 1..10 do
    {worker, _} =
      :timer.tc(fn ->
        for _ <- 1..calls, do: {:ok, _} = GenServer.call(:worker, {:invoke, function, args})
      end)

    {runtime, _} =
      :timer.tc(fn -> for _ <- 1..calls, do: {:ok, _} = Worker.Runtime.invoke(module, args) end)

    {worker / calls, runtime / calls}
  end

median = fn xs -> Enum.at(Enum.sort(xs), div(length(xs), 2)) end
worker = median.(Enum.map(blocks, &elem(&1, 0)))
runtime = median.(Enum.map(blocks, &elem(&1, 1)))

IO.puts(
  "worker #{Float.round(worker, 2)} µs, runtime #{Float.round(runtime, 2)} µs, " <>
    "ratio #{Float.round(worker / runtime, 2)}"
)
