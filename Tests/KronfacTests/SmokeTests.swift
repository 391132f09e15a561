import Testing
@testable import Kronfac

@Test("The C core is linked with OpenBLAS and reports its version")
func coreLibrary() throws {
    #expect(CoreLibrary.version.split(separator: ".").count == 3)
    #expect(CoreLibrary.usesBLAS)
    #expect(CoreLibrary.buildInfo.contains("openblas"))
    expectKronfacError(.invalidArgument) { try CoreLibrary.setBLASThreads(0) }
}
