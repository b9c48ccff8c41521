defmodule Worker.LoaderTest do
  # Making a compiled module from an artifact or from code, with a data
  # directory of its own per test.
  use ExUnit.Case, async: false
  @moduletag :tmp_dir
  @moduletag :capture_log

  import Worker.Test.Fixtures
  alias Worker.{Loader, Store}

  setup %{tmp_dir: dir} do
    old = Application.fetch_env!(:worker, :data_dir)
    Application.put_env(:worker, :data_dir, dir)
    on_exit(fn -> Application.put_env(:worker, :data_dir, old) end)
    code = wasm!("hello")
    %{key: {"loader", "hello#{System.unique_integer([:positive])}", "h"}, code: code}
  end

  test "code is compiled, then stored with its artifact; the next load needs no compile",
       %{key: key, code: code} do
    hash = Store.code_hash(code)

    assert {:ok, %{source: {:compiled, _}, code_hash: ^hash, module: module}} =
             Loader.load(key, code, hash)

    assert module.kind == :funless
    assert Store.get_code(key) == {:ok, code}
    assert {:ok, _artifact} = Store.get_artifact(hash)

    # from the code on disk: the artifact, no compile
    assert {:ok, %{source: :artifact, code_hash: ^hash}} = Loader.load(key)
    assert {:ok, %{source: :artifact}} = Loader.load(key, code, hash)
  end

  test "code that does not compile is never stored", %{key: key} do
    assert {:error, {:invalid_module, _}} = Loader.load(key, "not wasm", Store.code_hash("x"))
    assert Store.get_code(key) == :error
  end

  test "without code on disk, the function is not found", %{key: key} do
    assert Loader.load(key) == {:error, :code_not_found}
  end

  test "an artifact the runtime refuses is deleted, and the code compiled again",
       %{key: key, code: code} do
    hash = Store.code_hash(code)
    assert {:ok, _} = Loader.load(key, code, hash)
    {:ok, artifact} = Store.get_artifact(hash)
    :ok = Store.put_artifact(hash, binary_part(artifact, 0, 100))

    assert {:ok, %{source: {:compiled, _}}} = Loader.load(key)
    # and a good one is written back
    assert {:ok, good} = Store.get_artifact(hash)
    assert byte_size(good) == byte_size(artifact)
  end
end
