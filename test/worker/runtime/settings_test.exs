defmodule Worker.Runtime.SettingsTest do
  # The native runtime's process-wide settings (Worker.Runtime.Settings).
  use ExUnit.Case, async: true

  alias Worker.Runtime
  alias Worker.Runtime.Settings

  test "the defaults are the native runtime's own" do
    defaults = Runtime.default_settings()

    assert %Settings{pool_instances: 1_000, epoch_tick_us: 100} = defaults
    assert defaults.memory_cap_bytes == 512 * 1024 * 1024
    assert defaults.max_module_bytes == 64 * 1024 * 1024
    assert defaults.keep_resident_bytes in [0, 1024 * 1024]
    assert defaults.wasi_p3 == false

    assert {defaults.p3_instance_requests, defaults.p3_instance_concurrency,
            defaults.p3_instance_idle_ms} == {128, 16, 1_000}
  end

  test "every field must be given" do
    assert_raise ArgumentError, fn -> struct!(Settings, pool_instances: 1) end
  end

  test "the application runs with what Worker.Config read" do
    settings = Worker.Config.runtime_settings()
    assert Runtime.configure(settings) == :ok
    assert settings.memory_cap_bytes == Application.fetch_env!(:worker, :memory_cap_bytes)
  end
end
