Worker.Test.Fixtures.build_functions!()
Worker.Test.Fixtures.build_components!()
Worker.Test.Fixtures.build_foreign_components!()
ExUnit.start()
