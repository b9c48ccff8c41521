defmodule Worker.StoreTest do
  # Each test points the data directory at a directory of its own.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures, only: [compile!: 1]

  alias Worker.Store

  @moduletag :tmp_dir

  setup %{tmp_dir: dir} do
    old = Application.fetch_env!(:worker, :data_dir)
    Application.put_env(:worker, :data_dir, dir)
    on_exit(fn -> Application.put_env(:worker, :data_dir, old) end)
    :ok
  end

  defp key(n), do: {"mod", "fun#{n}", :crypto.hash(:sha256, "fun#{n}")}
  defp sha256(data), do: :crypto.hash(:sha256, data)
  defp hex(data), do: Base.encode16(sha256(data), case: :lower)

  # the runtime runs in the test VM: both are {:ok, _} there
  defp artifact_path!(code), do: elem({:ok, _} = Store.artifact_path(Store.code_hash(code)), 1)
  defp fingerprint!, do: elem({:ok, _} = Worker.Runtime.fingerprint(), 1)

  # Every file the store keeps under `dir`, relative to it.
  defp files(dir) do
    Path.wildcard(Path.join(dir, "**"), match_dot: true)
    |> Enum.filter(&File.regular?/1)
    |> Enum.map(&Path.relative_to(&1, dir))
    |> Enum.sort()
  end

  # A file in the store's format: magic, SHA-256 of the payload, payload.
  defp framed(payload), do: ["FLW1", sha256(payload), payload]

  # An atom this VM does not have, in the external term format:
  # binary_to_term(_, [:safe]) refuses to make it.
  defp unknown_atom do
    name = "fl_store_test_no_such_atom_#{System.unique_integer([:positive])}"
    {name, <<131, 119, byte_size(name), name::binary>>}
  end

  describe "code" do
    test "reads back what was written, under a file named by the key", %{tmp_dir: dir} do
      assert Store.put_code(key(1), "code one") == :ok
      assert Store.put_code(key(2), "code two") == :ok
      assert Store.get_code(key(1)) == {:ok, "code one"}
      assert Store.get_code(key(2)) == {:ok, "code two"}

      path = Store.code_path(key(1))
      assert Path.dirname(path) == Path.join(dir, "functions")
      assert Path.basename(path) == hex(:erlang.term_to_binary(key(1)))
      assert path != Store.code_path(key(2))

      # the payload carries the key too, behind the magic and its checksum
      payload = :erlang.term_to_binary({key(1), "code one"})
      assert File.read!(path) == IO.iodata_to_binary(framed(payload))
    end

    test "leaves no temporary file behind", %{tmp_dir: dir} do
      assert Store.put_code(key(1), "v1") == :ok
      assert Store.put_code(key(1), "v2") == :ok
      assert Store.put_artifact(Store.code_hash("code"), "artifact") == :ok
      assert Store.put_term("node_info", {"a", "b"}) == :ok

      assert files(dir) ==
               Enum.sort([
                 Path.relative_to(Store.code_path(key(1)), dir),
                 Path.relative_to(artifact_path!("code"), dir),
                 "node_info"
               ])
    end

    test "a rewrite replaces the file whole: a reader of the old one still reads all of it" do
      old = :binary.copy("old ", 10_000)
      assert Store.put_code(key(1), old) == :ok
      path = Store.code_path(key(1))
      before = File.read!(path)
      {:ok, fd} = :file.open(path, [:read, :raw, :binary])

      try do
        assert Store.put_code(key(1), "new") == :ok
        # written to a new file and renamed over the old: the open file is untouched
        assert :file.pread(fd, 0, byte_size(before) + 1) == {:ok, before}
      after
        :file.close(fd)
      end

      assert Store.get_code(key(1)) == {:ok, "new"}
    end

    test "the temporary file is synced before the rename, and the directory after" do
      path = Store.code_path(key(1))
      calls = trace_calls(fn -> assert Store.put_code(key(1), "code") == :ok end)

      assert [
               {:file, :sync, [_fd]},
               {:file, :rename, [tmp, ^path]},
               {Worker.Native, :store_sync_dir, [dir]}
             ] = calls

      assert String.starts_with?(to_string(tmp), path <> ".tmp.")
      assert dir == Path.dirname(path)
    end

    test "a missing key reads as :error" do
      assert Store.get_code(key(1)) == :error
    end

    test "delete removes the code; deleting what is not there is fine" do
      assert Store.put_code(key(1), "one") == :ok
      assert Store.put_code(key(2), "two") == :ok
      assert Store.delete_code(key(1)) == :ok
      assert Store.get_code(key(1)) == :error
      refute File.exists?(Store.code_path(key(1)))
      assert Store.get_code(key(2)) == {:ok, "two"}
      assert Store.delete_code(key(1)) == :ok
    end

    test "a corrupt, truncated or foreign file reads as :error and is deleted" do
      path = Store.code_path(key(1))
      assert Store.put_code(key(1), "some code") == :ok
      good = File.read!(path)
      last = byte_size(good) - 1
      <<head::binary-size(last), byte>> = good

      damaged = [
        corrupt: head <> <<Bitwise.bxor(byte, 1)>>,
        truncated: head,
        torn_header: binary_part(good, 0, 20),
        empty: "",
        foreign: "not a store file at all, but long enough to hold a header of 36 bytes",
        other_magic: "FLW2" <> binary_part(good, 4, byte_size(good) - 4)
      ]

      for {what, bytes} <- damaged do
        File.write!(path, bytes)

        log =
          capture_log(fn ->
            assert Store.get_code(key(1)) == :error, "#{what} was read"
          end)

        refute File.exists?(path), "#{what} was kept"
        assert log =~ "corrupt or foreign"
      end
    end

    test "a sound file holding another key's code is not returned as this key's" do
      assert Store.put_code(key(2), "code two") == :ok
      File.mkdir_p!(Path.dirname(Store.code_path(key(1))))
      File.cp!(Store.code_path(key(2)), Store.code_path(key(1)))
      assert Store.get_code(key(1)) == :error
      assert Store.get_code(key(2)) == {:ok, "code two"}
    end

    test "a checksummed payload that is no safe term reads as :error" do
      path = Store.code_path(key(1))
      File.mkdir_p!(Path.dirname(path))

      {name, unknown_atom} = unknown_atom()

      for payload <- [unknown_atom, "not a term", :erlang.term_to_binary({key(1), :not_binary})] do
        File.write!(path, framed(payload))
        assert Store.get_code(key(1)) == :error
      end

      # reading made no atom (atoms are never freed)
      assert_raise ArgumentError, fn -> String.to_existing_atom(name) end
    end

    test "a write that cannot land returns an error and leaves no temporary file", %{
      tmp_dir: dir
    } do
      # a directory where the file should go: the rename fails
      path = Store.code_path(key(1))
      File.mkdir_p!(Path.join(path, "in_the_way"))
      File.write!(Path.join([path, "in_the_way", "file"]), "")
      before = files(dir)
      assert {:error, _} = Store.put_code(key(1), "code")
      assert files(dir) == before

      # a file where the directory should go: nothing can be written
      File.write!(Path.join(dir, "artifacts"), "in the way")
      before = files(dir)
      assert {:error, _} = Store.put_artifact(Store.code_hash("code"), "artifact")
      assert files(dir) == before
    end
  end

  describe "artifacts" do
    test "are kept per code, under the engine fingerprint", %{tmp_dir: dir} do
      assert Store.put_artifact(Store.code_hash("code a"), "artifact a") == :ok
      assert Store.put_artifact(Store.code_hash("code b"), "artifact b") == :ok
      assert Store.get_artifact(Store.code_hash("code a")) == {:ok, "artifact a"}
      assert Store.get_artifact(Store.code_hash("code b")) == {:ok, "artifact b"}
      assert Store.get_artifact(Store.code_hash("code c")) == :error

      assert artifact_path!("code a") ==
               Path.join([dir, "artifacts", fingerprint!(), hex("code a")])

      assert Store.delete_artifact(Store.code_hash("code a")) == :ok
      assert Store.get_artifact(Store.code_hash("code a")) == :error
      assert Store.get_artifact(Store.code_hash("code b")) == {:ok, "artifact b"}
      assert Store.delete_artifact(Store.code_hash("code a")) == :ok
    end

    test "are kept as the runtime sealed them: the store adds nothing to check" do
      hello = compile!("hello")
      {:ok, artifact} = Worker.Runtime.serialize(hello)
      assert Store.put_artifact(Store.code_hash("code"), artifact) == :ok
      assert File.read!(artifact_path!("code")) == artifact
      assert Store.get_artifact(Store.code_hash("code")) == {:ok, artifact}
    end

    test "prune keeps the artifacts of stored code and deletes the rest", %{tmp_dir: dir} do
      assert Store.put_code(key(1), "code one") == :ok
      assert Store.put_code(key(2), "code two") == :ok

      for code <- ["code one", "code two", "orphan"],
          do: Store.put_artifact(Store.code_hash(code), "compiled")

      assert Store.delete_code(key(2)) == :ok

      # artifacts of another engine cannot be loaded here
      other = Path.join([dir, "artifacts", "other-engine"])
      File.mkdir_p!(other)
      File.write!(Path.join(other, hex("code one")), "old engine")

      # corrupt code refers to nothing
      assert Store.put_code(key(3), "code three") == :ok
      assert Store.put_artifact(Store.code_hash("code three"), "compiled") == :ok
      File.write!(Store.code_path(key(3)), "garbage")

      capture_log(fn -> assert Store.prune_artifacts() == :ok end)

      assert Store.get_artifact(Store.code_hash("code one")) == {:ok, "compiled"}
      assert Store.get_artifact(Store.code_hash("code two")) == :error
      assert Store.get_artifact(Store.code_hash("orphan")) == :error
      assert Store.get_artifact(Store.code_hash("code three")) == :error
      refute File.exists?(other)
      assert Store.get_code(key(1)) == {:ok, "code one"}
    end

    test "prune with nothing stored is fine" do
      assert Store.prune_artifacts() == :ok
    end
  end

  describe "terms" do
    test "read back what was written; missing or damaged reads as :error", %{tmp_dir: dir} do
      assert Store.get_term("node_info") == :error
      assert Store.put_term("node_info", {"name", "tag"}) == :ok
      assert Store.get_term("node_info") == {:ok, {"name", "tag"}}
      assert Store.put_term("node_info", %{any: [:term]}) == :ok
      assert Store.get_term("node_info") == {:ok, %{any: [:term]}}

      path = Path.join(dir, "node_info")
      File.write!(path, binary_part(File.read!(path), 0, 10))
      capture_log(fn -> assert Store.get_term("node_info") == :error end)
      refute File.exists?(path)

      File.write!(path, framed("no term"))
      assert Store.get_term("node_info") == :error

      {name, unknown_atom} = unknown_atom()
      File.write!(path, framed(unknown_atom))
      assert Store.get_term("node_info") == :error
      assert_raise ArgumentError, fn -> String.to_existing_atom(name) end
    end
  end

  test "remove_temporary deletes what interrupted writes left, and nothing else", %{tmp_dir: dir} do
    assert Store.put_code(key(1), "code") == :ok
    assert Store.put_artifact(Store.code_hash("code"), "artifact") == :ok
    assert Store.put_term("node_info", :info) == :ok
    kept = files(dir)

    code_path = Store.code_path(key(1))
    artifact_path = artifact_path!("code")

    leftovers = [
      code_path <> ".tmp.1",
      artifact_path <> ".tmp.22",
      Path.join(dir, "node_info.tmp.333")
    ]

    for path <- leftovers, do: File.write!(path, "torn")

    assert Store.remove_temporary() == :ok
    assert files(dir) == kept
    assert Store.get_code(key(1)) == {:ok, "code"}
  end

  # The calls to :file.sync/1, :file.rename/2 and Worker.Native.store_sync_dir/1
  # that `fun` makes, in order.
  defp trace_calls(fun) do
    parent = self()
    tracer = spawn_link(fn -> collect([], parent) end)
    patterns = [{:file, :sync, 1}, {:file, :rename, 2}, {Worker.Native, :store_sync_dir, 1}]

    for mfa <- patterns, do: :erlang.trace_pattern(mfa, true, [:global])
    :erlang.trace(self(), true, [:call, {:tracer, tracer}])

    try do
      fun.()
    after
      :erlang.trace(self(), false, [:call])
      for mfa <- patterns, do: :erlang.trace_pattern(mfa, false, [:global])
    end

    # the trace messages reach the tracer before :done
    ref = :erlang.trace_delivered(self())
    assert_receive {:trace_delivered, _, ^ref}
    send(tracer, :done)

    receive do
      {^tracer, calls} -> calls
    end
  end

  defp collect(calls, parent) do
    receive do
      {:trace, _pid, :call, mfa} ->
        collect([mfa | calls], parent)

      :done ->
        send(parent, {self(), Enum.reverse(calls)})
    end
  end
end
