Worker.Test.Fixtures.build_functions!()
ExUnit.start()
