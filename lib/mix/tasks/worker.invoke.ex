defmodule Mix.Tasks.Worker.Invoke do
  @shortdoc "Compiles a function and invokes it once"
  @moduledoc """
  Compiles a FunLess function and invokes it, printing the result and how
  long compiling and invoking took. The quickest way to try a module:

      mix worker.invoke functions/target/wasm32-wasip1/release/hello.wasm '{"name": "FunLess"}'

  The second argument is the invocation's arguments as JSON text (default
  `{}`). Options:

    * `--timeout MS` - the invocation's timeout (default 30 000);
    * `--max-memory MB` - its memory limit (default 128).

  Lines the function logs are printed as they come. Exits with status 1,
  after one line on stderr, if the file cannot be read, the arguments are
  not JSON, the module does not compile or the invocation fails.

  It starts only the runtime, not the worker: no `:worker` process, no
  cluster and no metrics endpoint (nor `os_mon`), so it runs beside a
  worker node that holds the metrics port, and writes nothing to the data
  directory.
  """
  use Mix.Task
  require Logger

  @impl true
  def run(argv) do
    {opts, args, invalid} =
      OptionParser.parse(argv, strict: [timeout: :integer, max_memory: :integer])

    {path, json} =
      case {args, invalid} do
        {[path], []} -> {path, "{}"}
        {[path, json], []} -> {path, json}
        _ -> fail("usage: mix worker.invoke [--timeout MS] [--max-memory MB] PATH.wasm [JSON]")
      end

    wasm =
      case File.read(path) do
        {:ok, wasm} -> wasm
        {:error, reason} -> fail("cannot read #{path}: #{:file.format_error(reason)}")
      end

    start_runtime()

    input =
      case Worker.JSON.decode(json) do
        {:ok, input} -> input
        {:error, reason} -> fail("the arguments are not valid JSON: #{reason}")
      end

    {compile_us, compiled} = :timer.tc(fn -> Worker.Runtime.compile(wasm) end)

    module =
      case compiled do
        {:ok, module} -> module
        {:error, reason} -> fail("compile failed: #{inspect(reason)}")
      end

    invoke_opts =
      [metadata: [fl_function: Path.basename(path, ".wasm")]] ++
        Enum.flat_map(opts, fn
          {:timeout, ms} -> [timeout: ms]
          {:max_memory, mb} -> [max_memory: mb * 1024 * 1024]
        end)

    Logger.configure(level: :info)
    {invoke_us, result} = :timer.tc(fn -> Worker.Runtime.invoke(module, input, invoke_opts) end)
    # A warm second call, with its logging off, shows the steady-state cost.
    {warm_us, _} =
      Task.async(fn ->
        Logger.disable(self())
        :timer.tc(fn -> Worker.Runtime.invoke(module, input, invoke_opts) end)
      end)
      |> Task.await(:infinity)

    Mix.shell().info("compile: #{ms(compile_us)} (#{module.wasm_bytes} bytes)")
    Mix.shell().info("invoke:  #{ms(invoke_us)} first, #{ms(warm_us)} warm")

    case result do
      {:ok, value} ->
        {:ok, text} = Worker.JSON.encode(value)
        Mix.shell().info("result:  " <> text)

      {:error, reason} ->
        fail("error:   #{inspect(reason)}")
    end
  end

  # What Worker.Application does for the runtime, and nothing else: the
  # settings (with their defaults). The NIF loads with Worker.Native.
  # A bad FL_* value is one line too, naming the variable.
  defp start_runtime do
    Mix.Task.run("app.config")
    Worker.Config.apply_defaults()

    with {:error, reason} <- Worker.Config.configure_runtime(),
         do: fail("cannot start the runtime: #{inspect(reason)}")
  rescue
    error in ArgumentError -> fail(Exception.message(error))
  end

  defp ms(us), do: :io_lib.format("~.3f ms", [us / 1000]) |> IO.iodata_to_binary()

  defp fail(message) do
    Mix.shell().error(message)
    exit({:shutdown, 1})
  end
end
