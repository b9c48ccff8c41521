defmodule Worker.Test.Fixtures do
  @moduledoc """
  Test modules: the examples in `functions/` and the test guests in
  `test/guests/`, built from source, and the WAT files in `test/fixtures/`.

  The examples are what a function author would copy, each doing its one
  documented thing; the test guests are what only the tests (and the
  benchmark) run: copies of the examples with hooks the tests call (a
  status, a panic, an exit, spinning, sleeping, growing memory, recursing,
  raw output), and guests that echo, fail, log or misbehave.

  Modules and commands for wasm32-wasip1, named as `wasm_path/1` takes them:

    * `functions`, a cargo workspace: `"hello"`, `"http"` (FunLess modules)
      and `"hello_command"` (a WASI command);
    * `test/guests`, a cargo workspace: `"echo"`, `"error"`, `"logger"`
      (FunLess modules) and `"probe_command"` (hello_command with hooks);
    * `functions/go`, built by `scripts/go-guests` with the Go that
      `scripts/setup` installs: `"hello_go"` (a FunLess module, a WASI
      reactor) and `"hello_go_command"` (a WASI command).

  Components (WASI 0.2, and 0.3 where named so), named as
  `component_path/1` takes them:

    * `functions/components`, a cargo workspace built for wasm32-wasip2:
      `"hello_http"` and `"fetch_http"` (wasi:http/incoming-handler),
      `"hello_cli"` (wasi:cli/run), `"hello_cli_p3"` (wasi:cli/run@0.3),
      `"hello_http_p3"` (wasi:http/handler@0.3);
    * `test/guests/components`, a cargo workspace built for wasm32-wasip2:
      `"probe_http"`, `"probe_fetch"`, `"echo_http"`, `"hostile_http"`
      (wasi:http/incoming-handler), `"probe_cli"`, `"echo_cli"`
      (wasi:cli/run), `"probe_cli_p3"` (wasi:cli/run@0.3), `"probe_http_p3"`
      (wasi:http/handler@0.3);
    * `"hello_py"` (functions/python/hello_py, wasi:cli/run),
      `"hello_p3_py"` (functions/python/hello_p3_py,
      wasi:http/handler@0.3), `"hello_js"`
      (functions/js/hello_js, wasi:http/incoming-handler), and their test
      copies with hooks, `"probe_py"` (test/guests/python/probe_py) and
      `"probe_js"` (test/guests/js/probe_js), built by
      `scripts/componentize` with the tools `scripts/setup` installs;
    * wstd's own examples, built by `scripts/foreign-guests` from the crate
      as cargo downloaded it: `"wstd_http_server"`,
      `"wstd_http_server_proxy"` (both export wasi:http/incoming-handler
      and wasi:cli/run), `"wstd_http_client"`, `"wstd_complex_http_client"`
      (wasi:cli/run, URL from argv), `"wstd_tcp_echo_server"`,
      `"wstd_tcp_stream_client"` (wasi:cli/run, importing wasi:sockets);
      and wasip3's, `"wasip3_cli-command"` (wasi:cli/run@0.3, prints
      "Hello, WASI!") and `"wasip3_http-proxy"` (wasi:http/handler@0.3,
      answers "Hello, WASI!").
  """

  alias Worker.MixCargo

  @root Path.expand("../..", __DIR__)
  @functions Path.join(@root, "functions")
  @components Path.join(@functions, "components")
  @guests Path.join([@root, "test", "guests"])
  @guest_components Path.join(@guests, "components")

  @example_modules ~w(hello http hello_command)
  @guest_modules ~w(echo error logger probe_command)
  @go_modules ~w(hello_go hello_go_command)
  @example_components ~w(hello_http fetch_http hello_cli hello_cli_p3 hello_http_p3)
  @guest_components_built ~w(probe_http probe_cli probe_fetch echo_http echo_cli hostile_http
                             probe_cli_p3 probe_http_p3)
  @componentized_examples ~w(hello_py hello_p3_py hello_js)
  @componentized_guests ~w(probe_py probe_js)

  @doc """
  Builds the wasm32-wasip1 examples and test guests, Rust and Go
  (incrementally); raises with the build's output on failure.
  """
  def build_functions! do
    for {what, workspace} <- [{"example functions", @functions}, {"test guests", @guests}] do
      run!(
        "building the #{what}",
        MixCargo.cargo!(),
        ["build", "--release", "--target", "wasm32-wasip1"],
        cd: workspace
      )
    end

    run!("building the Go functions", "bash", [script("go-guests")])
  end

  @doc "The Wasm binary of a module or command, e.g. `wasm!(\"hello\")`."
  def wasm!(name), do: File.read!(wasm_path(name))

  @doc "Where cargo puts the Wasm binary of a module or command (see the module doc for the names)."
  def wasm_path(name) when name in @example_modules,
    do: Path.join(MixCargo.release_dir(@functions, "wasm32-wasip1"), name <> ".wasm")

  def wasm_path(name) when name in @guest_modules,
    do: Path.join(MixCargo.release_dir(@guests, "wasm32-wasip1"), name <> ".wasm")

  def wasm_path(name) when name in @go_modules,
    do: Path.join([MixCargo.target_dir(@functions), "go", name <> ".wasm"])

  @doc """
  Builds the components (incrementally): `functions/components` and
  `test/guests/components` for wasm32-wasip2, then the Python and
  JavaScript ones. Raises with the build's output on failure, or when their
  tools are missing (run `scripts/setup`).
  """
  def build_components! do
    for {what, workspace} <- [
          {"example components", @components},
          {"test guest components", @guest_components}
        ] do
      run!(
        "building the #{what}",
        MixCargo.cargo!(),
        ["build", "--release", "--target", "wasm32-wasip2"],
        cd: workspace
      )
    end

    run!("building the Python and JavaScript components", "bash", [script("componentize")])
  end

  @doc """
  Builds wstd's and wasip3's own examples (incrementally) with
  `scripts/foreign-guests`; raises with its output on failure.
  """
  def build_foreign_components! do
    run!("building wstd's and wasip3's examples", "bash", [script("foreign-guests")])
  end

  @doc "The binary of a component, e.g. `component!(\"hello_http\")`."
  def component!(name), do: File.read!(component_path(name))

  @doc "Where the build puts a component (see the module doc for the names)."
  def component_path(name) when name in @example_components,
    do: Path.join(MixCargo.release_dir(@components, "wasm32-wasip2"), name <> ".wasm")

  def component_path(name) when name in @guest_components_built,
    do: Path.join(MixCargo.release_dir(@guest_components, "wasm32-wasip2"), name <> ".wasm")

  def component_path(name) when name in @componentized_examples,
    do: Path.join([MixCargo.target_dir(@components), "componentized", name <> ".wasm"])

  def component_path(name) when name in @componentized_guests,
    do: Path.join([MixCargo.target_dir(@guest_components), "componentized", name <> ".wasm"])

  def component_path("wstd_" <> _ = name), do: foreign_path(name)
  def component_path("wasip3_" <> _ = name), do: foreign_path(name)

  defp foreign_path(name),
    do: Path.join([MixCargo.target_dir(@guest_components), "foreign", name <> ".wasm"])

  defp script(name), do: Path.join([@root, "scripts", name])

  defp run!(what, command, args, opts \\ []) do
    env = [{"CARGO", MixCargo.cargo!()}]
    opts = Keyword.merge([stderr_to_stdout: true, env: env], opts)
    {output, status} = System.cmd(command, args, opts)

    if status != 0 do
      raise "#{what} failed:\n#{output}"
    end

    :ok
  end

  @doc "The text of `test/fixtures/NAME.wat`."
  def wat!(name), do: File.read!(Path.join([@root, "test", "fixtures", name <> ".wat"]))

  @doc "Compiles a module or command (as `wasm!/1` names it) or a WAT fixture, raising on failure."
  def compile!({:wat, name}), do: ok!(Worker.Runtime.compile(wat!(name)))
  def compile!(name), do: ok!(Worker.Runtime.compile(wasm!(name)))

  defp ok!({:ok, module}), do: module
  defp ok!(other), do: raise("compile failed: #{inspect(other)}")

  @doc """
  WAT text of a valid module that takes this 2-core machine about 2 s to
  compile (400 functions of 1,000 steps of arithmetic), for tests of what
  waits on a compile.
  """
  def slow_module do
    step = fn i ->
      "local.get 0 i32.const #{i} i32.add local.get 1 i32.mul local.set 1 " <>
        "local.get 1 i32.const #{rem(i, 7) + 1} i32.rotl local.set 0"
    end

    body = Enum.map_join(1..1_000, "\n", step)

    funcs =
      Enum.map_join(1..400, "\n", fn i ->
        "(func $f#{i} (param i32) (result i32) (local i32) #{body} local.get 0)"
      end)

    ~s|(module (memory (export "memory") 1) #{funcs} | <>
      ~s|(func (export "__invoke") (param i32) (result i32) i32.const 0))|
  end
end
